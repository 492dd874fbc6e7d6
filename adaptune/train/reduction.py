"""The recipe's `budget:` section: a training-free token reducer applied to the model for a whole run.

What: `budget: {reducer: divprune, tokens: 4}` attaches the reducer (`adaptune.budget.reducers`) to the model after the
adapter, and the task builds every batch and generation with that many visual tokens per image. Training, the run's
own evaluation and `adaptune eval RUN` (which rebuilds the run from its config.yaml) all see the same budget.

Why: a reducer is a budget method like TokenFLEX, but not a PEFT method (it has no weights): it belongs to the
recipe, not to `adapter:`. Every setting acts or is refused: a reducer on a task that cannot build batches at a
budget, on an unsupported family, next to another budget method, or in a GRPO recipe is a RecipeError.

    handle = apply_budget_section(recipe, model, task)   # None when the recipe has no reducer
"""

from __future__ import annotations

from typing import Any

from ..budget.reducers import ReducerHandle, reduce_tokens
from ..config import Recipe, RecipeError
from ..models import UnsupportedModelError
from ..registry import REDUCERS
from ..tasks.base import BUDGET, Task


def check_budget_section(recipe: Recipe) -> None:
    """Refuse a `budget:` section that cannot act (before any model is loaded)."""
    section, where = recipe.budget, f"{recipe.source_file}: budget"
    if section.reducer is None:
        if section.tokens is not None:
            raise RecipeError(f"{where}.tokens: set budget.reducer as well (learned budget methods such as TokenFLEX "
                              "take their budgets from adapter.params)")
        return
    if recipe.kind != "adapter":
        raise RecipeError(f"{where}.reducer: token reducers apply to kind: adapter recipes, not {recipe.kind!r}")
    if section.reducer not in REDUCERS:
        raise RecipeError(f"{where}.reducer: unknown token reducer {section.reducer!r}; known: "
                          f"{', '.join(REDUCERS.names())}")
    if section.tokens is None or section.tokens < 1:
        raise RecipeError(f"{where}.tokens: a reducer needs a positive number of visual tokens per image, got "
                          f"{section.tokens!r}")


def apply_budget_section(recipe: Recipe, model: Any, task: Task) -> ReducerHandle | None:
    """Attach the recipe's reducer to `model` and set the task's budget; None without a reducer."""
    check_budget_section(recipe)
    section, where = recipe.budget, f"{recipe.source_file}: budget"
    if section.reducer is None:
        return None
    if BUDGET not in task.provides or not hasattr(task, "use_budget"):
        raise RecipeError(f"{where}.reducer: task {recipe.task.name!r} cannot build batches at a visual-token budget "
                          "(use a VQA task such as vqa_sft)")
    try:
        handle = reduce_tokens(model, section.reducer)
    except (UnsupportedModelError, ValueError) as exc:
        raise RecipeError(f"{where}.reducer: {exc}") from None
    task.use_budget(section.tokens)
    return handle


__all__ = ["apply_budget_section", "check_budget_section"]
