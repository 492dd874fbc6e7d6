"""What a training task is: data, a batch loss, and an evaluation, for one kind of model.

A recipe names a task (`task.name`) and gives its parameters (`task.params`, validated against the task's own
dataclass). The trainer (`adaptune.train`) only talks to this interface, so adapter training, self-distillation,
few-shot classification and segmentation share one loop with checkpoints, resume, metrics and reports.

    @TASKS.register("my_task")
    class MyTask(Task):
        Params = MyParams                  # a dataclass; unknown keys in the recipe are an error

        def build_datasets(self, loaded): ...   -> {"train": Dataset-like, "validation": ...}
        def collate(self, rows): ...            -> dict of tensors
        def loss(self, model, batch): ...       -> (scalar loss, {metric: float})
        def evaluate(self, model, split): ...   -> {metric: float}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..models import LoadedModel


@dataclass
class NoParams:
    """For tasks without parameters."""


class Task:
    """Base class of training tasks. Subclasses set `Params` and implement the four methods."""

    Params: ClassVar[type] = NoParams
    description: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ()
    """Model families the task works with; empty means any."""

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
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch, and extra scalars to log."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "validation", limit: int | None = None) -> dict[str, Any]:
        """Metrics of `model` on `split` (accuracy, visual tokens per sample, ...)."""
        return {}

    def on_train_begin(self, model: torch.nn.Module) -> None:
        """Hook for tasks that need the wrapped model before training (e.g. caching frozen targets)."""
