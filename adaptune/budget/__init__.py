"""The visual-token budget: one package that every budget-aware part of adaptune goes through.

- `resolution`: the one downsampling function (`downsample`, BOX filter) and token costs from the model family.
- `protocol`: the `resize_image` tool (name, argument, schema), the system prompt, rendering and parsing of tool
  calls, VisionThink's format rule.
- `answers`: total parsers of completions (`<think>`, `<answer>`, `\\boxed{}`, tool calls).
- `two_turn`: the two-turn resolution loop with transformers `generate` (policy, fixed baselines, scripted decisions).
- `grid`, `placeholders`: budgets as token grids, and the processor wrapper that emits exactly N placeholders per
  image for any budget (TokenFLEX and the token reducers share it).
- `inputs`: how a model reads the budget back from such a batch (placeholder count, `vision_grid_thw`), shared by
  TokenFLEX and the reducers.
- `reducers`: training-free token reducers (FasterVLM, DivPrune, ToMe: pruning and merging after the projector), in
  the `REDUCERS` registry; `apply_reducer(model, "divprune")` / `reduce_tokens(model, name)` attach one.

Layering: this package sits above `adaptune.models` and `adaptune.data`, below the adapter methods, tasks, RL and
evaluation; it never imports any of those.

    from adaptune.budget import downsample, BudgetProcessor, answer_with_resolution_policy, apply_reducer
"""

from .grid import Budget, BudgetError, BudgetSampler, budget_tokens, resolve_grid
from .inputs import BudgetCall, add_budget_listener, remove_budget_listener
from .placeholders import BudgetProcessor, budget_processor
from .reducers import ReducerHandle, Reduction, TokenReducer, apply_reducer, get_reducer, reduce_tokens
from .resolution import TokenCounter, downsample, image_tokens
from .two_turn import Result, answer_with_resolution_policy, generate_texts, vision_token_ids

__all__ = ["Budget", "BudgetCall", "BudgetError", "BudgetProcessor", "BudgetSampler", "ReducerHandle", "Reduction",
           "Result", "TokenCounter", "TokenReducer", "add_budget_listener", "answer_with_resolution_policy",
           "apply_reducer", "budget_processor", "budget_tokens", "downsample", "generate_texts", "get_reducer",
           "image_tokens", "reduce_tokens", "remove_budget_listener", "resolve_grid", "vision_token_ids"]
