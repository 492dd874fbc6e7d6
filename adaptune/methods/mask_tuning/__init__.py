"""R-AMT (regularized mask tuning) as a PEFT method: learned binary masks over frozen weights.

What: a real-valued score per masked weight (init 0.01), mask = score > 0.005 with a straight-through gradient,
effective weight = mask * frozen weight; only the scores train. Loss = task loss + 1e-4 * sum of the scores' L2 norms,
with optional gradient dropout gated by the KL to the frozen zero-shot model (`gradient_dropout.py`). Both are the
method's objective (`MaskTuningObjective`, declared on `INFO`), which the trainer applies on every task and family the
method claims, with the settings of the adapter's `MaskTuningConfig` only.
Why: the knowledge is already in the pre-trained weights; masking a few percent of them adapts CLIP-like encoders to a
few-shot task, and after `merge_and_unload()` inference costs exactly what the base model costs.
How:
    import adaptune.methods.mask_tuning          # registers "mask_tuning" with PEFT (import adaptune does it too)
    from peft import get_peft_model, PeftModel
    from adaptune.methods.mask_tuning import MaskTuningConfig, mask_tuning_objective, masked_share
    model = get_peft_model(clip, MaskTuningConfig())     # vision attention projections + patch embedding
    loss, logs = mask_tuning_objective(model, ce_loss, logits=logits, reference_logits=frozen_logits)
    model.save_pretrained("adapter/")                   # bit-packed masks + scores
    merged = model.merge_and_unload()                   # plain CLIP with masked weights baked in
Recipes: `adapter: {method: mask_tuning, params: {gradient_dropout_lambda: 0.3}}` with any task whose loss comes
from logits (`fewshot_clip`, `vqa_sft`, `segmentation`); on a task without logits `gradient_dropout`
must be false (otherwise the recipe is refused).
"""

from __future__ import annotations

from typing import Any

from .._peft_ext import MethodInfo, register_method
from .config import METHOD_NAME, MaskTuningConfig
from .gradient_dropout import (
    MaskTuningObjective,
    gradient_dropout,
    keep_probability,
    kl_to_reference,
    mask_tuning_objective,
)
from .layer import MaskTuningLayer, binary_mask, pack_bits, unpack_bits
from .model import MaskTuningModel, check_base_model, default_target_modules
from .report import masked_share, plot_masked_share

FAMILIES = ("clip", "siglip", "dinov2", "clipseg", "qwen3_vl", "llava")


def _test_config(family: str, model: Any) -> MaskTuningConfig:
    return MaskTuningConfig()


INFO = register_method(
    MethodInfo(
        name=METHOD_NAME, config_cls=MaskTuningConfig, model_cls=MaskTuningModel, families=FAMILIES,
        test_config=_test_config, mergeable=True, objective=MaskTuningObjective,
        fsdp=False,  # its state-dict hook fails on the meta tensors of FSDP 2 preparation (docs/scaling.md)
        description="R-AMT: learned binary masks over frozen vision weights (straight-through scores, gradient "
                    "dropout); merges into the weights",
    ),
    prefix=MaskTuningModel.prefix,
)

__all__ = [
    "INFO", "MaskTuningConfig", "MaskTuningLayer", "MaskTuningModel", "MaskTuningObjective", "binary_mask",
    "check_base_model", "default_target_modules", "gradient_dropout", "keep_probability", "kl_to_reference",
    "mask_tuning_objective", "masked_share", "pack_bits", "plot_masked_share", "unpack_bits",
]
