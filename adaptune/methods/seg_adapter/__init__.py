"""VLSM-Adapter as a PEFT method: ReLU bottleneck adapters for the CLIPSeg segmentation VLM.

What: dense adapters (DA) inside the first layers of both CLIP encoders (after attention and after the MLP, before each
residual add) or shallow adapters (SA) on the vision states feeding the decoder plus text adapters added to the
conditioning embedding; V / VL / VLC variants (VLC adds an adapter on the projected text conditioning). Whether the
decoder trains too is `train_decoder` (or any `modules_to_save`).
Why: adapting a frozen CLIPSeg to a new domain with a few percent of its parameters (docs/methods.md#seg_adapter).
How:
    import adaptune.methods.seg_adapter                  # registers "seg_adapter" with PEFT
    from peft import get_peft_model
    from adaptune.methods.seg_adapter import SegAdapterConfig
    model = get_peft_model(clipseg, SegAdapterConfig(variant="dense", modality="VLC"))
    logits = model(input_ids=..., attention_mask=..., pixel_values=...).logits     # gradients reach the encoders
Recipes: `adapter: {method: seg_adapter, params: {variant: shallow, modality: VL}}` with task `segmentation`.
Not mergeable: `merge_and_unload()` raises (the bottlenecks are non-linear).
"""

from __future__ import annotations

from typing import Any

from .._peft_ext import MethodInfo, register_method
from .clipseg_forward import clipseg_forward, install_grad_forward, uninstall_grad_forward
from .config import METHOD_NAME, MODALITIES, VARIANTS, SegAdapterConfig
from .layer import Bottleneck, ConditioningAdapterLayer, InputAdapterLayer, OutputAdapterLayer
from .model import SegAdapterModel, base_dims, check_base_model, default_target_modules


def _test_config(family: str, model: Any) -> SegAdapterConfig:
    return SegAdapterConfig(variant="dense", modality="VLC", r=4)  # the tiny CLIPSeg is 32 wide; the default is 64


INFO = register_method(
    MethodInfo(
        name=METHOD_NAME, config_cls=SegAdapterConfig, model_cls=SegAdapterModel, families=("clipseg",),
        test_config=_test_config, mergeable=False,
        description="VLSM-Adapter: dense / shallow ReLU bottleneck adapters for CLIPSeg (V, VL, VLC)",
    ),
    prefix=SegAdapterModel.prefix,
)

__all__ = [
    "INFO", "MODALITIES", "VARIANTS", "Bottleneck", "ConditioningAdapterLayer", "InputAdapterLayer",
    "OutputAdapterLayer", "SegAdapterConfig", "SegAdapterModel", "base_dims", "check_base_model", "clipseg_forward",
    "default_target_modules", "install_grad_forward", "uninstall_grad_forward",
]
