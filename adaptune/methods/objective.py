"""What an adapter method adds to training, declared once by the method and applied by the trainer on every task.

What: `MethodObjective` is the training side of a method: extra loss terms or gradient surgery (`loss`), a hook on
training batches (`on_collate`), what it needs from the task (`requirements`, capabilities such as `LOGITS`) and what
it supplies to tasks (`supplies`, e.g. `LOSS`: the objective computes the whole loss). A method names its objective on
its `MethodInfo(objective=...)`; `adaptune.train.objectives` (used by `TaskTrainer`) finds the active adaptune
method on the model, builds the objective from that adapter's config (the single source of the method's settings)
and applies it on every batch, whatever the task. A task returns a `TaskLoss` (defined here as the contract between
the two sides; tasks import it from `adaptune.tasks.base`) and lists the capabilities it offers (`Task.provides`) and
needs (`Task.needs`); a recipe whose task lacks a capability a method setting needs is a `RecipeError` naming
`adapter.params.<key>` before any training. Methods sit below tasks (docs/architecture.md): they never import a task,
they state capabilities.

Why: a method's objective used to live in one task (R-AMT's gradient dropout only in `fewshot_clip`, TokenFLEX's
budget sampling only in `flex_vqa`), so the same settings silently did nothing on every other task.

How:
    class MyObjective(MethodObjective):
        @classmethod
        def requirements(cls, config):            # checked at recipe load / trainer build
            return [Requirement(LOGITS, "my_key", "my term compares logits")] if config.my_key else []

        def loss(self, model, out, meta):         # out: the task's TaskLoss; returns (loss, extra logs)
            extra = self.config.weight * penalty(model)
            return out.loss + extra, {"penalty": float(extra)}

    register_method(MethodInfo(..., objective=MyObjective))

Capabilities (strings, so third-party tasks and methods can add their own):
    LOGITS  the task's `TaskLoss` carries `logits` (rows of categorical logits the loss is computed from) and a
            `reference` callable that recomputes them on the same batch (the objective calls it with the adapter
            disabled and no gradient: the frozen model's predictions)
    IMAGES  the task's `TaskLoss` carries `images`: the batch's pixel values (PH-Reg distils on them)
    BUDGET  `task.collate(rows, budget=N)` builds a batch with N visual tokens per image (TokenFLEX)
    LOSS    supplied by an objective: it computes the training loss itself (the task's `TaskLoss.loss` is None)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

LOGITS = "logits"
IMAGES = "images"
BUDGET = "budget"
LOSS = "loss"

META_KEY = "adaptune_meta"
"""Batch key under which `on_collate` hooks leave plain Python values for their `loss` (popped before `task.loss`)."""


@dataclass
class TaskLoss:
    """A task's loss on one batch and what a method's objective may need from it (tasks import it from
    `adaptune.tasks.base`)."""

    loss: torch.Tensor | None
    """The task's own scalar loss; None when the method's objective supplies the loss (the task `needs` LOSS)."""
    logs: dict[str, float] = field(default_factory=dict)
    """Extra scalars to log (averaged between logging steps)."""
    logits: torch.Tensor | None = None
    """(N, C): the predictions `loss` was computed from, one categorical distribution per row (class logits, LM
    logits at the label positions, [0, x] per pixel for a sigmoid mask). Set by tasks that provide LOGITS."""
    reference: Callable[[], torch.Tensor] | None = None
    """Recomputes `logits` on the same batch with the model as it is now; objectives call it with the adapter
    disabled and no gradient to get the frozen model's predictions. Set together with `logits`."""
    images: torch.Tensor | None = None
    """The batch's pixel values, for objectives on the vision tower (tasks that provide IMAGES)."""


@dataclass(frozen=True)
class Requirement:
    """A capability the task must provide for a method setting to take effect."""

    capability: str
    key: str | None
    """The `adapter.params` key that needs it; None: the method itself needs it (reported as `adapter.method`)."""
    reason: str
    """Why, and what to change (ends up in the RecipeError)."""


@dataclass
class ObjectiveContext:
    """What an objective knows about the run besides its config."""

    task: Any
    """The `adaptune.tasks.base.Task` (methods sit below tasks: they may read documented task attributes only, such
    as register_distill's `target_cache`)."""
    family: str
    seed: int


class MethodObjective:
    """Base class: the identity objective (the task's loss, batches as the task builds them)."""

    supplies: ClassVar[frozenset[str]] = frozenset()
    """Capabilities this objective offers tasks (`Task.needs`), e.g. LOSS or BUDGET."""

    def __init__(self, config: Any, context: ObjectiveContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def requirements(cls, config: Any) -> list[Requirement]:
        """What the task must provide for `config`'s settings; checked before training (no model needed)."""
        return []

    def on_collate(self, rows: list[dict[str, Any]], collate: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        """Build one training batch from `rows` with the task's `collate` (which accepts the keyword options of the
        capabilities the task provides, e.g. `budget=`). Values for `loss` go under `batch[META_KEY]`."""
        return collate(rows)

    def loss(self, model: nn.Module, out: TaskLoss, meta: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch from the task's output, and the objective's own scalars to log."""
        if out.loss is None:
            raise RuntimeError(f"{type(self).__name__}: the task returned no loss and this objective supplies none")
        return out.loss, {}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside accelerate / DDP / DataParallel / torch.compile wrappers (a PeftModel stays a PeftModel)."""
    try:
        from accelerate.utils import extract_model_from_parallel

        model = extract_model_from_parallel(model)
    except ImportError:  # accelerate is a transformers Trainer dependency; be tolerant anyway
        pass
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def is_parallel_wrapper(model: nn.Module) -> bool:
    """Whether calling `model` does work that calling the module inside it does not: DDP (gradient all-reduce is armed
    in its forward), FSDP 1 (unshards the root's parameters) or an FSDP 2 / ZeRO-3 root (hooks on `__call__`)."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return True
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    if isinstance(model, FullyShardedDataParallel):
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        return False
    return isinstance(model, FSDPModule) or type(model).__name__ == "DeepSpeedEngine"


def forward_through(model: nn.Module, fn: Callable[[nn.Module], Any]) -> Any:
    """`fn(unwrapped)` run INSIDE the forward of `model`'s parallel wrapper, so the wrapper does its per-forward work.

    Tasks and objectives call model methods that are not `forward` (`get_image_features`, `generate`, PEFT's
    `disable_adapter`) on the unwrapped model (`unwrap_model`: a PeftModel stays one, so "is this a PEFT model"
    checks hold). Calling those on a DDP wrapper fails (the wrapper has no such attribute), and calling them on the
    module inside it skips DDP's forward, which arms the gradient all-reduce: the ranks would silently train apart.
    So here the wrapper is called with the inner module's `forward` swapped for `fn` for that one call; without a
    wrapper (one process, or a torch.compile wrapper only) `fn(unwrapped)` is called directly.
    """
    inner = unwrap_model(model)
    if not is_parallel_wrapper(model):
        return fn(inner)
    # DDP / FSDP 1 / DeepSpeed call `.module` in their forward; an FSDP 2 root is the module itself (hooks on __call__)
    target = model.module if isinstance(getattr(model, "module", None), nn.Module) else model
    result: dict[str, Any] = {}
    had = "forward" in vars(target)
    saved = vars(target).get("forward")

    def restore() -> None:
        if had:
            target.forward = saved
        elif "forward" in vars(target):
            del target.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        restore()  # one call only: the task's own `model(**batch)` inside fn must reach the real forward
        result["value"] = fn(inner)
        return _tensors_of(result["value"])

    target.forward = forward
    try:
        # one placeholder argument: FSDP 2's root pre-forward moves (args, kwargs) to the device and indexes them
        model(torch.zeros(()))
    finally:
        restore()
    return result["value"]


def _tensors_of(value: Any) -> Any:
    """The tensors in `value` (a tensor, a tuple whose first item is the loss, a TaskLoss) for DDP's unused-parameter
    search, which walks the autograd graph from the forward's outputs."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    if isinstance(value, TaskLoss):
        return [v for v in (value.loss, value.logits) if isinstance(v, torch.Tensor)]
    return []


def active_method(model: nn.Module) -> tuple[Any, Any] | None:
    """(MethodInfo, config) of the active adaptune adapter on `model` (wrappers unwrapped), or None (no adapter,
    or a PEFT method adaptune does not register, such as LoRA)."""
    from ..registry import METHODS

    model = unwrap_model(model)
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    try:
        active = model.active_adapter
        if callable(active):  # transformers' adapter mixin has a method of that name
            active = active()
    except (AttributeError, ValueError):
        active = next(iter(configs))
    names = [active] if isinstance(active, str) else list(active or [])
    for name in names:
        config = configs.get(name)
        peft_type = getattr(config, "peft_type", None)
        method = str(getattr(peft_type, "value", peft_type) or "").lower()
        if method in METHODS:
            return METHODS.get(method), config
    return None
