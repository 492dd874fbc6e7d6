"""`flex_vqa`: VQA training for a visual-token-budget adapter (TokenFLEX), evaluated at every budget.

What: rows with `image`, `question`, `answer` (GlyphQA by default, loaded lazily from `adaptune.data.glyphqa`; or any
`datasets` folder, see `vqa_sft`). Training is `vqa_sft`'s: the LM loss on the answer tokens only, and the budget of
each training batch is drawn by the adapter method's objective from the adapter's own settings
(`FlexProjectorConfig.budgets` / `budget_weights`, `adaptune.methods.flex_projector.objective`), which then asks this
task for the batch at that budget (`collate(rows, budget=N)`, placeholders from `adaptune.budget.BudgetProcessor`).
The task has no copy of the budgets: a recipe that still sets `task.params.budgets` or `budget_weights` is refused
with a message saying to put them in `adapter.params`.

Why: one projector must serve every budget; this task adds the per-budget evaluation that shows whether it does.

    task: {name: flex_vqa, params: {dataset: glyphqa, eval_budgets: [4, 9, 16]}}
    adapter: {method: flex_projector, params: {budgets: [4, 9, 16], budget_weights: [2, 3, 5]}}

Evaluation reports `b{N}/accuracy`, `b{N}/visual_tokens` (placeholders per answer), per-kind accuracy and latency for
every budget in `eval_budgets` (default: the adapter's `budgets`), plus `accuracy` / `visual_tokens` averaged over the
budgets. The task needs an adapter whose method handles budgets (capability BUDGET: `flex_projector`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..methods.objective import active_method
from ..registry import TASKS
from .base import BUDGET
from .vqa import VQAParams, VQATask, summarize, take_rows


@dataclass
class FlexVQAParams(VQAParams):
    eval_budgets: list[int] | None = None
    """Budgets evaluated (default: the adapter's `budgets`, e.g. `FlexProjectorConfig.budgets`)."""
    scale_factor: int = 2
    """SmolVLM/Idefics3 only: the connector's pixel-shuffle factor (used to check that a budget fits)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_budgets is not None and (not self.eval_budgets or any(int(b) < 1 for b in self.eval_budgets)):
            raise ValueError(f"eval_budgets must be positive token counts, got {self.eval_budgets}")


def adapter_budgets(model: torch.nn.Module) -> list[int]:
    """The training budgets of the budget adapter on `model` (its config's `budgets`)."""
    found = active_method(model)
    budgets = getattr(found[1], "budgets", None) if found else None
    if not budgets:
        raise ValueError("flex_vqa: no eval_budgets given and the model has no budget adapter (flex_projector) whose "
                         "budgets to evaluate")
    return [int(b) for b in budgets]


@TASKS.register("flex_vqa")
class FlexVQATask(VQATask):
    Params = FlexVQAParams
    description = "TokenFLEX: VQA with the adapter's budget drawn per batch; accuracy and tokens at each budget"
    needs = frozenset({BUDGET})
    moved_to_adapter = ("budgets", "budget_weights")

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "validation", limit: int | None = None) -> dict[str, Any]:
        rows = take_rows(self.datasets()[split], limit)
        budgets = [int(b) for b in self.params.eval_budgets or adapter_budgets(model)]
        metrics: dict[str, Any] = {}
        for budget in budgets:
            summary = summarize(self.generate_answers(model, rows, budget=budget))
            metrics.update({f"b{budget}/{key}": value for key, value in summary.items()})
        for key in ("accuracy", "visual_tokens"):
            values = [metrics[f"b{b}/{key}"] for b in budgets if f"b{b}/{key}" in metrics]
            if values:
                metrics[key] = sum(values) / len(values)
        return metrics
