"""R-AMT's training objective: score regulariser plus gradient dropout, applied by the trainer on every task.

Gradient dropout (docs/methods.md#mask_tuning), per score element:
    a = d task_loss / d score,   b = d KL(frozen zero-shot logits || current logits) / d score   (T = 1)
    P = 1/2 * (1 + sign(a) * (a + b) / (|a| + |b|))          keep probability (1 when a and b agree in sign)
    applied gradient = [(1 - lambda) + lambda * 1(P > U)] * a,  U ~ Uniform(0, 1)
The KL gradient only gates, it is never applied. The regulariser (score_l2_weight * sum of the L2 norms of the score
tensors) is added to the task loss and its gradient passes ungated; parameters that are not mask scores (e.g.
`modules_to_save`) get the plain task gradient.

Integration design: `MaskTuningObjective` is the method's `MethodObjective` (`adaptune.methods.objective`), so the
trainer (`adaptune.train.objectives`, inside `TaskTrainer.compute_loss`) applies it to whatever task the recipe names;
the settings come only from the adapter's `MaskTuningConfig`. The task hands over its loss, the logits it was
computed from (one categorical distribution per row: CLIP class logits, the LM's next-token logits at the answer
positions, [0, x] per pixel of a sigmoid mask) and a callable that recomputes them; the objective calls that callable
with the adapter disabled and no gradient (the frozen zero-shot logits: the same model, no copy). A task that provides
no logits cannot honour `gradient_dropout=True`: that recipe is refused before training (`requirements`).
`mask_tuning_objective` computes a and b with two `torch.autograd.grad` calls over the one forward graph, gates a, and
returns a surrogate whose value is task_loss + regulariser and whose gradient is the gated one: `loss.backward()`
(Trainer, accelerate, gradient accumulation scaling) then applies exactly the gated gradient. Cost: one extra no-grad
forward with the adapter disabled and one extra backward pass. Under DDP each rank gates its own gradients before the
all-reduce.

    loss, logs = mask_tuning_objective(model, task_loss, logits=logits, reference_logits=frozen_logits)
    # or, on any task: TaskTrainer (or adaptune.train.objectives.training_loss) with a mask-tuning PeftModel
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..objective import LOGITS, MethodObjective, Requirement, unwrap_model
from .config import MaskTuningConfig
from .layer import MaskTuningLayer


def keep_probability(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """P = 1/2 (1 + sign(a) (a + b) / (|a| + |b|)); where a = b = 0 the ratio is taken as 0 (P = 1/2, and the applied
    gradient is 0 anyway)."""
    denominator = a.abs() + b.abs()
    ratio = torch.where(denominator > 0, (a + b) / denominator.clamp_min(torch.finfo(a.dtype).tiny),
                        torch.zeros_like(a))
    return 0.5 * (1.0 + torch.sign(a) * ratio)


def gradient_dropout(a: torch.Tensor, b: torch.Tensor, lam: float = 1.0,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(gated gradient, keep decisions): [(1 - lam) + lam * 1(P > U)] * a with U ~ Uniform(0, 1)."""
    p = keep_probability(a, b)
    device = generator.device if generator is not None else p.device
    u = torch.rand(p.shape, generator=generator, dtype=p.dtype, device=device).to(p.device)
    keep = p > u
    return ((1.0 - lam) + lam * keep.to(a.dtype)) * a, keep


def kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(reference / T) || softmax(logits / T)), averaged over the batch."""
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(reference_logits.detach().float() / temperature, dim=-1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """`model.disable_adapter()` for a PeftModel; a no-op for anything else."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        yield
        return
    with disable():
        yield


def find_mask_tuning(model: nn.Module) -> tuple[MaskTuningConfig, list[tuple[MaskTuningLayer, str]]] | None:
    """The active mask-tuning config of `model` and its (layer, adapter name) pairs, or None without mask tuning."""
    configs = getattr(model, "peft_config", None) or {}
    layers = [m for m in model.modules() if isinstance(m, MaskTuningLayer)]
    if not layers:
        return None
    active = [a for a in layers[0].active_adapters if isinstance(configs.get(a), MaskTuningConfig)]
    if not active:
        return None
    pairs = [(layer, name) for layer in layers for name in active if name in layer.amt_scores]
    return configs[active[0]], pairs


def score_regularizer(pairs: list[tuple[MaskTuningLayer, str]], weight: float) -> torch.Tensor:
    """weight * sum over masked tensors of the L2 norm of their scores."""
    norms = [layer.amt_scores[name].norm() for layer, name in pairs]
    return weight * torch.stack(norms).sum() if norms else torch.zeros(())


def mask_tuning_objective(
    model: nn.Module,
    task_loss: torch.Tensor,
    logits: torch.Tensor | None = None,
    reference_logits: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """R-AMT loss for `model`: task loss + score regulariser, with gradient dropout when the config asks for it and
    `reference_logits` (the frozen model's logits on the same batch) are given. Returns (loss, scalars to log).

    Without mask tuning on `model` this returns `task_loss` unchanged, so tasks can call it unconditionally.
    """
    found = find_mask_tuning(model)
    if found is None:
        return task_loss, {}
    config, pairs = found
    reg = score_regularizer(pairs, config.score_l2_weight).to(task_loss.device)
    logs: dict[str, float] = {"task_loss": float(task_loss.detach()), "score_l2": float(reg.detach())}
    use_dropout = (config.gradient_dropout and reference_logits is not None and logits is not None
                   and torch.is_grad_enabled() and task_loss.requires_grad)
    if not use_dropout:
        return task_loss + reg, logs
    scores = [layer.amt_scores[name] for layer, name in pairs if layer.amt_scores[name].requires_grad]
    score_ids = {id(s) for s in scores}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in score_ids]
    params = scores + others
    kl = kl_to_reference(logits, reference_logits)
    grads_a = torch.autograd.grad(task_loss, params, retain_graph=True, allow_unused=True)
    grads_b = torch.autograd.grad(kl, scores, allow_unused=True)
    surrogate = task_loss.new_zeros(())
    kept = total = 0
    for i, param in enumerate(params):
        a = grads_a[i]
        if a is None:
            continue
        if i < len(scores):
            b = grads_b[i] if grads_b[i] is not None else torch.zeros_like(a)
            a, keep = gradient_dropout(a, b, config.gradient_dropout_lambda, generator)
            nonzero = grads_a[i] != 0
            kept += int((keep & nonzero).sum())
            total += int(nonzero.sum())
        surrogate = surrogate + (a.detach() * param).sum()
    logs.update({"kl_to_frozen": float(kl.detach()), "gd_keep_rate": kept / max(total, 1)})
    value = (task_loss + reg).detach()
    return value + (surrogate - surrogate.detach()) + (reg - reg.detach()), logs


class MaskTuningObjective(MethodObjective):
    """R-AMT on any task: score L2 always; gradient dropout against the frozen model's logits when the config asks."""

    @classmethod
    def requirements(cls, config: MaskTuningConfig) -> list[Requirement]:
        if not config.gradient_dropout:
            return []
        return [Requirement(LOGITS, "gradient_dropout",
                            "gradient dropout gates the task gradient by the KL between the frozen and the current "
                            "model's predictions, and this task's loss comes from no logits; set "
                            "adapter.params.gradient_dropout: false to train with the score L2 only")]

    def __init__(self, config: MaskTuningConfig, context: Any) -> None:
        super().__init__(config, context)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """The seeded generator of the dropout draws on `device` (one per device, seeded with the run's seed)."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(int(self.context.seed))
        return self._generators[key]

    def loss(self, model: nn.Module, out: Any, meta: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if out.loss is None:
            raise RuntimeError("mask tuning regularises the task's loss, and the task returned none")
        model = unwrap_model(model)
        reference = None
        training = torch.is_grad_enabled() and out.loss.requires_grad
        if self.config.gradient_dropout and training:
            if out.logits is None or out.reference is None:
                raise RuntimeError("mask tuning: gradient_dropout=True needs the task's logits and their reference "
                                   "(TaskLoss.logits / .reference); this task returned none")
            with torch.no_grad(), adapters_disabled(model):
                reference = out.reference().detach()
        return mask_tuning_objective(model, out.loss, logits=out.logits, reference_logits=reference,
                                     generator=self.generator(out.loss.device))
