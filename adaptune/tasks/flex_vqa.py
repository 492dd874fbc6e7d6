"""`flex_vqa`: train a TokenFLEX projector on VQA rows with a visual-token budget drawn per batch, and evaluate
accuracy and visual tokens per answer at each budget.

What: rows with `image`, `question`, `answer` (GlyphQA by default, loaded lazily from `adaptune.data.glyphqa`; or any
`datasets` folder, see `vqa_sft`). Each training batch draws one budget from `budgets` with `budget_weights` (the
paper: 64/144/256 at 2:3:5; on a 128 px tiny Qwen3-VL with an 8x8 patch grid and 16 default tokens, 4/9/16 keeps the
proportions) and the processor emits exactly that many placeholders per image (`FlexProcessor`). The loss is the LM
loss on the answer tokens only (inherited from `vqa_sft`).

Why: one projector must serve every budget; training on a mix is what keeps low budgets from collapsing.

    task: {name: flex_vqa, params: {dataset: glyphqa, budgets: [4, 9, 16], budget_weights: [2, 3, 5]}}
    adapter: {method: flex_projector}

Evaluation reports `b{N}/accuracy`, `b{N}/visual_tokens` (placeholders per answer), per-kind accuracy and latency for
every budget in `eval_budgets` (default: `budgets`), plus `accuracy` / `visual_tokens` averaged over the budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..budget.grid import BudgetSampler
from ..budget.placeholders import BudgetProcessor as FlexProcessor
from ..registry import TASKS
from .vqa import VQAParams, VQATask, summarize, take_rows


@dataclass
class FlexVQAParams(VQAParams):
    budgets: list[int] = field(default_factory=lambda: [4, 9, 16])
    """Visual tokens per image drawn during training, one budget per batch."""
    budget_weights: list[float] = field(default_factory=lambda: [2.0, 3.0, 5.0])
    """Relative weights of `budgets` (paper: 2:3:5)."""
    eval_budgets: list[int] | None = None
    """Budgets evaluated (default: `budgets`)."""
    scale_factor: int = 2
    """SmolVLM/Idefics3 only: the connector's pixel-shuffle factor (used to check that a budget fits)."""

    def __post_init__(self) -> None:
        if not self.budgets or any(int(b) < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive token counts, got {self.budgets}")
        if len(self.budget_weights) != len(self.budgets):
            raise ValueError(f"budget_weights needs one weight per budget ({len(self.budgets)}), "
                             f"got {len(self.budget_weights)}")


@TASKS.register("flex_vqa")
class FlexVQATask(VQATask):
    Params = FlexVQAParams
    description = "TokenFLEX: VQA with one visual-token budget per batch; accuracy and tokens at each budget"

    def __init__(self, params: FlexVQAParams, loaded: Any, seed: int = 0) -> None:
        super().__init__(params, loaded, seed)
        self._flex = FlexProcessor(loaded.processor, scale_factor=params.scale_factor)
        self._sampler = BudgetSampler(params.budgets, params.budget_weights, seed=seed)
        self._budget: int | None = None

    @property
    def processor(self) -> FlexProcessor:
        """The family processor wrapped so that it emits the current budget's placeholder count."""
        return self._flex.with_budget(self._budget)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        self._budget = self._sampler()
        batch = super().collate(rows)
        batch["flex_budget"] = self._budget
        return batch

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = dict(batch)
        budget = batch.pop("flex_budget", None)
        out = model(**batch)
        return out.loss, ({"budget": float(budget)} if budget is not None else {})

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "validation", limit: int | None = None) -> dict[str, Any]:
        rows = take_rows(self.datasets()[split], limit)
        budgets = self.params.eval_budgets or self.params.budgets
        metrics: dict[str, Any] = {}
        previous = self._budget
        try:
            for budget in budgets:
                self._budget = int(budget)
                summary = summarize(self.generate_answers(model, rows))
                metrics.update({f"b{budget}/{key}": value for key, value in summary.items()})
        finally:
            self._budget = previous
        for key in ("accuracy", "visual_tokens"):
            values = [metrics[f"b{b}/{key}"] for b in budgets if f"b{b}/{key}" in metrics]
            if values:
                metrics[key] = sum(values) / len(values)
        return metrics
