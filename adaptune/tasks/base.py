"""What a training task is: data, a batch loss, and an evaluation, for one kind of model.

A recipe names a task (`task.name`) and gives its parameters (`task.params`, validated against the task's own
dataclass). The trainer (`adaptune.train`) only talks to this interface, so adapter training, self-distillation,
few-shot classification and segmentation share one loop with checkpoints, resume, metrics and reports.

A task knows its data and its own loss, never an adapter method: what a method adds to training (R-AMT's score L2
and gradient dropout, TokenFLEX's per-batch budget, PH-Reg's distillation) is the method's objective
(`adaptune.methods.objective`), applied by the trainer on every task. So `loss` returns a `TaskLoss` (defined with
that protocol, re-exported here) with what an
objective may need (the logits and how to recompute them on the frozen model, the images), and the class says which
of those capabilities it provides (`provides`) and which it needs from the method (`needs`); the trainer refuses a
recipe whose method settings the task cannot honour.

    @TASKS.register("my_task")
    class MyTask(Task):
        Params = MyParams                  # a dataclass; unknown keys in the recipe are an error
        provides = frozenset({LOGITS})     # capabilities from adaptune.methods.objective

        def build_datasets(self): ...           -> {"train": Dataset-like, "validation": ...}
        def collate(self, rows): ...            -> dict of tensors
        def loss(self, model, batch): ...       -> TaskLoss(loss, {metric: float}, logits=..., reference=...)
        def evaluate(self, model, split): ...   -> {metric: float}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..methods.objective import BUDGET, IMAGES, LOGITS, LOSS, TaskLoss  # noqa: F401  (re-exported for tasks)
from ..models import LoadedModel


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of `model`'s parameters (CPU for a model without any): where evaluation batches must go."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def on_device(batch: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """`batch` with its tensors on `model`'s device (evaluation builds batches itself; the trainer moves only its
    own)."""
    device = model_device(model)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class NoParams:
    """For tasks without parameters."""


class Task:
    """Base class of training tasks. Subclasses set `Params` and implement the four methods."""

    Params: ClassVar[type] = NoParams
    description: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ()
    """Model families the task works with; empty means any."""
    provides: ClassVar[frozenset[str]] = frozenset()
    """Capabilities the task offers method objectives (LOGITS, IMAGES, BUDGET: see `adaptune.methods.objective`)."""
    needs: ClassVar[frozenset[str]] = frozenset()
    """Capabilities the task needs from the method's objective (LOSS: it has no loss of its own; BUDGET)."""
    moved_to_adapter: ClassVar[tuple[str, ...]] = ()
    """Former `task.params` keys that are now settings of the adapter method (a recipe still setting one is a
    RecipeError saying to put it in `adapter.params`)."""
    recipe_file: str | None = None
    """The recipe this task was built from (set by `make_task`; names the file in errors raised later)."""

    def __init__(self, params: Any, loaded: LoadedModel, seed: int = 0) -> None:
        if self.families and loaded.family.name not in self.families:
            raise ValueError(f"task {type(self).__name__} needs a model of family {' or '.join(self.families)}, "
                             f"got {loaded.family.name!r}")
        self.params = params
        self.loaded = loaded
        self.seed = seed

    @property
    def processor(self) -> Any:
        return self.loaded.processor

    def build_datasets(self) -> dict[str, Any]:
        """Datasets (anything indexable with len) per split; "train" is required."""
        raise NotImplementedError

    def datasets(self) -> dict[str, Any]:
        """`build_datasets()`, built once and cached."""
        if getattr(self, "_datasets", None) is None:
            self._datasets = self.build_datasets()
        return self._datasets

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """One batch from `rows` (the trainer's data collator). Tasks that provide BUDGET also take `budget=N`."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> TaskLoss:
        """The task's loss on one batch, extra scalars to log, and the capabilities in `provides` (logits and their
        reference, images). The method's objective is applied on top by the trainer (`adaptune.train.objectives`)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "validation", limit: int | None = None) -> dict[str, Any]:
        """Metrics of `model` on `split` (accuracy, visual tokens per sample, ...)."""
        return {}

    def on_train_begin(self, model: torch.nn.Module) -> None:
        """Hook for tasks that need the wrapped model before training (e.g. caching frozen targets)."""
