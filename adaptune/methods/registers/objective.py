"""PH-Reg's training objective: self-distillation of the student towards its frozen, test-time-augmented self.

What: on the images a task hands over (`TaskLoss.images`), the loss is (1 - cosine) + mse_weight * MSE between the
student's patch features (registers on) and the teacher's denoised ones (the same model with the adapter disabled,
averaged over `num_views` shifted/flipped views; `distill.py`), all settings read from the adapter's
`RegistersConfig`. The objective supplies the whole loss (`supplies = {LOSS}`), so `register_distill` only provides
images (and, optionally, its on-disk target cache as `task.target_cache`).
Why: a method's objective belongs to the method; with the settings in the adapter config the teacher cannot differ
between two places that each think they own it.
How: declared on the method's `MethodInfo(objective=RegistersObjective)`; applied by the trainer
(`adaptune.train.objectives`). A task that provides no images cannot honour it: a registers recipe on such a task is
refused (naming `adapter.method`), and so is `register_distill` with any other method (it has no loss of its own).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..objective import IMAGES, LOSS, MethodObjective, ObjectiveContext, Requirement, unwrap_model
from .config import RegistersConfig
from .distill import Distiller


class RegistersObjective(MethodObjective):
    """PH-Reg self-distillation on the task's images, with the settings of the adapter's `RegistersConfig`."""

    supplies = frozenset({LOSS})

    @classmethod
    def requirements(cls, config: RegistersConfig) -> list[Requirement]:
        return [Requirement(IMAGES, None,
                            "PH-Reg trains the registers by self-distillation on the batch's images, and this task "
                            "does not hand its images to the method (use task register_distill)")]

    def __init__(self, config: RegistersConfig, context: ObjectiveContext) -> None:
        super().__init__(config, context)
        self.distiller = Distiller(config, context.family, cache=getattr(context.task, "target_cache", None))

    def loss(self, model: nn.Module, out: Any, meta: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if out.images is None:
            raise RuntimeError("registers: the task returned no images to distil on (TaskLoss.images)")
        loss, parts = self.distiller.loss(unwrap_model(model), out.images)
        if out.loss is not None:  # a task with a loss of its own and images: distillation is added to it
            parts = {**parts, "distill_loss": float(loss.detach())}
            loss = out.loss + loss
        return loss, parts
