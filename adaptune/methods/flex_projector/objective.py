"""TokenFLEX's training objective: one visual-token budget per training batch, drawn from the adapter's config.

What: before each training batch is built, `FlexProjectorObjective.on_collate` draws a budget from
`FlexProjectorConfig.budgets` with `budget_weights` (a `BudgetSampler` seeded with the run's seed) and asks the task
to build the batch at that budget (`task.collate(rows, budget=N)`: the processor emits N placeholders per image and
the projector pools to N tokens). The loss is the task's own; the budget is logged as `budget`.
Why: one projector must serve every budget, and training on the mix is what keeps low budgets from collapsing. The
adapter config is the single source of the budgets: a task no longer has its own copy (`flex_vqa` only chooses which
budgets to evaluate), so `vqa_sft` and `flex_vqa` train the same way.
How: declared on the method's `MethodInfo(objective=FlexProjectorObjective)`; the trainer applies it
(`adaptune.train.objectives`). Tasks that cannot build a batch at a given budget (no BUDGET capability) are refused
when the recipe is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...budget.grid import BudgetSampler
from ..objective import BUDGET, META_KEY, MethodObjective, ObjectiveContext, Requirement
from .config import FlexProjectorConfig


class FlexProjectorObjective(MethodObjective):
    """Per-batch budget sampling from the adapter's `budgets` / `budget_weights`."""

    supplies = frozenset({BUDGET})

    @classmethod
    def requirements(cls, config: FlexProjectorConfig) -> list[Requirement]:
        return [Requirement(BUDGET, "budgets",
                            "TokenFLEX trains each batch at a budget drawn from adapter.params.budgets / "
                            "budget_weights, and this task cannot build a batch at a given visual-token budget "
                            "(use vqa_sft or flex_vqa)")]

    def __init__(self, config: FlexProjectorConfig, context: ObjectiveContext) -> None:
        super().__init__(config, context)
        self.sampler = BudgetSampler(config.budgets, config.budget_weights, seed=context.seed)

    def on_collate(self, rows: list[dict[str, Any]], collate: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        budget = self.sampler()
        batch = collate(rows, budget=budget)
        batch[META_KEY] = {**batch.get(META_KEY, {}), "budget": budget}
        return batch

    def loss(self, model: nn.Module, out: Any, meta: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, _ = super().loss(model, out, meta)
        return loss, ({"budget": float(meta["budget"])} if "budget" in meta else {})
