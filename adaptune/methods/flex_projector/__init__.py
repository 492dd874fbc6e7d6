"""TokenFLEX (`flex_projector`): one projector serving many visual-token budgets, as a PEFT adapter.

Importing this package registers the method with PEFT and with adaptune's `METHODS` (done by `import adaptune` once
the lead's `adaptune/methods/__init__.py` imports it).

    from peft import get_peft_model
    from adaptune.methods.flex_projector import FlexProjectorConfig, FlexProcessor

    model = get_peft_model(base, FlexProjectorConfig(budgets=[4, 9, 16]))
    flex = FlexProcessor(processor)
    inputs = flex(images=images, text=prompts, budget=9, return_tensors="pt", padding=True)  # 9 placeholders/image
    model.generate(**inputs, max_new_tokens=8)

`FlexProcessor` is `adaptune.budget.BudgetProcessor` (the placeholder rewriting every budget method shares).
The budget is a per-call argument of the processor (`budget=N` tokens per image, or `(h, w)`); the model reads it back
from what the processor emitted (Qwen-VL: a pooled `image_grid_thw` plus the real `vision_grid_thw`; LLaVA/SmolVLM:
the placeholder count), so the two cannot disagree.

Training: the method's objective (`objective.FlexProjectorObjective`) draws one budget per training batch from the
config's `budgets` / `budget_weights` (the only place they are set) on any task that can build a batch at a budget
(`vqa_sft`, `flex_vqa`); `flex_vqa` also evaluates at every budget.
"""

from __future__ import annotations

from .._peft_ext import MethodInfo, register_method
from ...budget.grid import BudgetError, BudgetSampler, budget_tokens, resolve_grid
from ...budget.placeholders import BudgetProcessor as FlexProcessor
from ...budget.placeholders import budget_processor as flex_processor
from .config import FlexProjectorConfig
from .layer import FlexProjector, FlexProjectorLayer, FlexVisionTowerLayer, pool_grid
from .model import SUPPORTED_FAMILIES, FlexProjectorModel
from .objective import FlexProjectorObjective

INFO = register_method(
    MethodInfo(
        name="flex_projector",
        config_cls=FlexProjectorConfig,
        model_cls=FlexProjectorModel,
        families=SUPPORTED_FAMILIES,
        test_config=lambda family, model: FlexProjectorConfig(budgets=[4, 9, 16]),  # tiny grids
        objective=FlexProjectorObjective,
        description="TokenFLEX: pool-to-budget + LayerNorm + SwiGLU projector, one set of weights for every "
                    "visual-token budget",
        mergeable=False,
    ),
    prefix="flex_",
)

__all__ = [
    "BudgetError", "BudgetSampler", "FlexProcessor", "FlexProjector", "FlexProjectorConfig", "FlexProjectorLayer",
    "FlexProjectorModel", "FlexProjectorObjective", "FlexVisionTowerLayer", "budget_tokens", "flex_processor",
    "pool_grid", "resolve_grid",
]
