"""`MaskTuningModel`: the PEFT tuner that puts R-AMT masks on the chosen layers of a model.

What it adds to the PEFT machinery:
- default targets found through the model family (`default_target_modules`): the vision encoder's attention
  projections (fused qkv or q/k/v, plus the output projection) and the patch-embedding convolution;
- a base-model check: the config records the family and the weight shape of every masked module when the adapter is
  created, and attaching it to another model raises a message listing what differs;
- adapter files with bit-packed masks (always) and the scores (unless `save_scores=False`);
- `merge_and_unload()` bakes the masks into the weights (zero inference overhead);
- on CLIPSeg, a forward that lets gradients reach the (normally no-grad) CLIP encoders.

    from peft import get_peft_model
    from adaptune.methods.mask_tuning import MaskTuningConfig
    model = get_peft_model(clip_model, MaskTuningConfig())
"""

from __future__ import annotations

import re
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .._peft_ext import roll_back_on_failure
from ..seg_adapter.clipseg_forward import install_grad_forward, uninstall_grad_forward
from .config import MaskTuningConfig
from .layer import SUPPORTED_LAYERS, MaskTuningLayer

_ATTENTION_PROJECTIONS = r"(?:q_proj|k_proj|v_proj|qkv|out_proj|o_proj|proj|query|key|value|dense)"
_PATCH_EMBEDDINGS = r"(?:patch_embedding|patch_embeddings\.projection|patch_embed\.proj)"


def family_name(model: nn.Module) -> str:
    """The adaptune family of `model`, or its `model_type` when no family describes it."""
    from ...models import UnsupportedModelError, detect_family

    try:
        return detect_family(model).name
    except UnsupportedModelError:
        return str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))


def default_target_modules(model: nn.Module) -> str:
    """A full-match regex over the vision tower: attention projections of every block and the patch embedding."""
    from ...registry import FAMILIES

    name = family_name(model)
    vision_path = FAMILIES.get(name).vision_path if name in FAMILIES else ""
    prefix = re.escape(vision_path) + r"\." if vision_path else ""
    attention = (rf"{prefix}(?:.*\.)?(?:layers?|blocks)\.\d+\.(?:self_attn|attn|attention)(?:\.attention|\.output)?"
                 rf"\.{_ATTENTION_PROJECTIONS}")
    return rf"(?:{attention}|{prefix}(?:.*\.)?{_PATCH_EMBEDDINGS})"


def check_base_model(model: nn.Module, config: MaskTuningConfig) -> None:
    """Raise a ValueError naming every difference between `model` and the model the adapter was made for."""
    problems = []
    family = family_name(model)
    if config.base_family and family != config.base_family:
        problems.append(f"model family: the adapter was made for {config.base_family!r}, this model is {family!r}")
    modules = dict(model.named_modules())
    for name, shape in (config.target_shapes or {}).items():
        module = modules.get(name)
        if module is None:
            problems.append(f"{name}: no such module in this model")
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        weight = getattr(base, "weight", None)
        if weight is None or list(weight.shape) != list(shape):
            have = tuple(weight.shape) if weight is not None else "no weight"
            problems.append(f"{name}: weight shape {have} here, {tuple(shape)} in the adapter")
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise ValueError("this mask-tuning adapter does not fit the base model:\n  - " + "\n  - ".join(shown))


class MaskTuningModel(BaseTuner):
    """PEFT tuner for R-AMT (`peft_type` MASK_TUNING). Use through `get_peft_model` / `PeftModel.from_pretrained`."""

    prefix: str = "amt_"
    tuner_layer_cls = MaskTuningLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: MaskTuningConfig, model_config: dict) -> MaskTuningConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = default_target_modules(self.model)
        return peft_config

    def _pre_injection_hook(self, model: nn.Module, config: MaskTuningConfig, adapter_name: str) -> None:
        check_base_model(model, config)

    def _post_injection_hook(self, model: nn.Module, config: MaskTuningConfig, adapter_name: str) -> None:
        if config.base_family is None:
            config.base_family = family_name(model)
        if config.target_shapes is None:
            config.target_shapes = {
                name: list(model.get_submodule(name).get_base_layer().weight.shape)
                for name in self.targeted_module_names
            }
        install_grad_forward(model)

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        with roll_back_on_failure(self, model, adapter_name):
            super().inject_adapter(model, adapter_name, **kwargs)

    def _create_and_replace(self, peft_config: MaskTuningConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str, **_: Any) -> None:
        if isinstance(target, MaskTuningLayer):
            target.update_layer(adapter_name, peft_config.init_score, peft_config.threshold,
                                peft_config.inference_mode)
            return
        if not isinstance(target, SUPPORTED_LAYERS):
            raise TypeError(f"mask tuning: target {current_key!r} is a {type(target).__name__}; only nn.Linear and "
                            "nn.Conv1d/2d/3d can be masked (adjust target_modules)")
        new_module = MaskTuningLayer(target, adapter_name, peft_config.init_score, peft_config.threshold,
                                     peft_config.inference_mode)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @classmethod
    def _get_adapter_state_dict(cls, model: nn.Module, config: MaskTuningConfig, adapter_name: str,
                                state_dict: dict[str, torch.Tensor],
                                unwanted_adapter_names: list[str]) -> dict[str, torch.Tensor]:
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        if not config.save_scores:
            selected = {k: v for k, v in selected.items() if ".amt_scores." not in k}
        return selected

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        model = super()._unload_and_optionally_merge(merge=merge, progressbar=progressbar, safe_merge=safe_merge,
                                                     adapter_names=adapter_names)
        uninstall_grad_forward(model)
        return model

    # -- helpers used by tasks and reports ----------------------------------------------------------------------------
    def mask_layers(self) -> dict[str, MaskTuningLayer]:
        return {name: m for name, m in self.model.named_modules() if isinstance(m, MaskTuningLayer)}
