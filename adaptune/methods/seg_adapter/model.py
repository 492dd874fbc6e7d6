"""`SegAdapterModel`: the PEFT tuner that places VLSM adapters in a CLIPSeg model.

It turns (variant, modality, dense_layers) into target modules, builds the right adapter layer for each (see
`layer.py`), records the base model's dimensions in the config and checks them when the adapter is attached to a
model, installs a CLIPSeg forward that lets gradients into the (upstream no-grad) encoders, and refuses to merge.

    from peft import get_peft_model
    from adaptune.methods.seg_adapter import SegAdapterConfig
    model = get_peft_model(clipseg, SegAdapterConfig(variant="shallow", modality="VLC"))
"""

from __future__ import annotations

import math
import re
from typing import Any

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .._peft_ext import restore_base_module, roll_back_on_failure
from .clipseg_forward import install_grad_forward, is_clipseg, uninstall_grad_forward
from .config import DEFAULT_WIDTHS, SegAdapterConfig
from .layer import MERGE_ERROR, ConditioningAdapterLayer, InputAdapterLayer, OutputAdapterLayer, _AdapterLayerBase


def base_dims(model: nn.Module) -> dict[str, Any]:
    """The dimensions an adapter depends on."""
    cfg = model.config
    return {
        "vision_hidden": cfg.vision_config.hidden_size, "text_hidden": cfg.text_config.hidden_size,
        "vision_layers": cfg.vision_config.num_hidden_layers, "text_layers": cfg.text_config.num_hidden_layers,
        "projection_dim": cfg.projection_dim, "reduce_dim": cfg.reduce_dim, "extract_layers": list(cfg.extract_layers),
    }


def check_base_model(model: nn.Module, config: SegAdapterConfig) -> None:
    """Raise a ValueError naming every difference between `model` and the model the adapter was made for."""
    if not is_clipseg(model):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(f"seg_adapter needs a CLIPSeg model (CLIPSegForImageSegmentation, family 'clipseg'); got "
                         f"{type(model).__name__} ({kind})")
    if not config.base_dims:
        return
    have = base_dims(model)
    problems = [f"{key}: {have.get(key)!r} here, {want!r} in the adapter"
                for key, want in config.base_dims.items() if have.get(key) != want]
    if problems:
        raise ValueError("this seg_adapter adapter does not fit the base model:\n  - " + "\n  - ".join(problems))


def _alternation(indices: range) -> str:
    return "(?:" + "|".join(str(i) for i in indices) + ")"


def default_target_modules(model: nn.Module, config: SegAdapterConfig) -> str:
    """A full-match regex of the modules the adapters wrap, from the variant and modality."""
    cfg = model.config
    parts = []
    with_text = config.modality in ("VL", "VLC")
    if config.variant == "dense":
        towers = [("vision", cfg.vision_config.num_hidden_layers)]
        if with_text:
            towers.append(("text", cfg.text_config.num_hidden_layers))
        for tower, depth in towers:
            k = min(depth, config.dense_layers or math.ceil(0.75 * depth))
            parts.append(rf"clip\.{tower}_model\.encoder\.layers\.{_alternation(range(k))}\.(?:self_attn|mlp)")
        if config.modality == "VLC":
            parts.append(r"clip\.text_projection")
    else:
        parts.append(r"decoder\.reduces\.\d+")
        if with_text:
            parts.append(r"clip\.text_projection")
    return "(?:" + "|".join(parts) + ")"


def decoder_modules(model: nn.Module, variant: str) -> list[str]:
    """modules_to_save that train the decoder without touching the modules the adapters wrap."""
    if variant == "dense":
        return ["decoder"]
    decoder = model.decoder
    names = [f"decoder.{n}" for n in ("film_mul", "film_add", "transposed_convolution")]
    return names + [f"decoder.layers.{i}" for i in range(len(decoder.layers))]


def _output_dim(module: nn.Module) -> int:
    if hasattr(module, "embed_dim"):
        return int(module.embed_dim)
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"cannot tell the output size of {type(module).__name__}")
    return int(linears[-1].out_features)


class SegAdapterModel(BaseTuner):
    """PEFT tuner for VLSM adapters (`peft_type` SEG_ADAPTER) on CLIPSeg."""

    prefix: str = "vlsm_"
    tuner_layer_cls = _AdapterLayerBase
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: SegAdapterConfig, model_config: dict) -> SegAdapterConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = default_target_modules(self.model, peft_config)
        if peft_config.train_decoder:
            wanted = decoder_modules(self.model, peft_config.variant)
            current = list(peft_config.modules_to_save or [])
            peft_config.modules_to_save = current + [m for m in wanted if m not in current]
        return peft_config

    def _pre_injection_hook(self, model: nn.Module, config: SegAdapterConfig, adapter_name: str) -> None:
        check_base_model(model, config)

    def _post_injection_hook(self, model: nn.Module, config: SegAdapterConfig, adapter_name: str) -> None:
        if config.base_family is None:
            config.base_family = "clipseg"
        if config.base_dims is None:
            config.base_dims = base_dims(model)
        install_grad_forward(model)

    def _r(self, config: SegAdapterConfig, dim: int) -> int:
        """The bottleneck width: `config.r`, else the paper's fixed width of the variant (not scaled with `dim`)."""
        return config.r if config.r is not None else DEFAULT_WIDTHS[config.variant]

    def _create_and_replace(self, peft_config: SegAdapterConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str, **_: Any) -> None:
        inference = peft_config.inference_mode
        scale = peft_config.init_scale
        if re.search(r"(^|\.)text_projection$", current_key):
            base = target.get_base_layer() if isinstance(target, _AdapterLayerBase) else target
            shallow_text = peft_config.variant == "shallow" and peft_config.modality in ("VL", "VLC")
            n_states = len(self.model.config.extract_layers) if shallow_text else 0
            r_cond = (peft_config.conditioning_r or max(1, base.out_features // 2)) if peft_config.modality == "VLC" \
                else None
            args = (n_states, self._r(peft_config, base.in_features), r_cond, scale, inference)
            layer_cls = ConditioningAdapterLayer
        elif re.search(r"(^|\.)reduces\.\d+$", current_key):
            base = target.get_base_layer() if isinstance(target, _AdapterLayerBase) else target
            dim = base.in_features
            args = (dim, self._r(peft_config, dim), scale, inference)
            layer_cls = InputAdapterLayer
        else:
            base = target.get_base_layer() if isinstance(target, _AdapterLayerBase) else target
            dim = _output_dim(base)
            args = (dim, self._r(peft_config, dim), scale, inference)
            layer_cls = OutputAdapterLayer
        if isinstance(target, layer_cls):
            target.update_layer(adapter_name, *args)
            return
        new_module = layer_cls(target, adapter_name, *args)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        with roll_back_on_failure(self, model, adapter_name):
            super().inject_adapter(model, adapter_name, **kwargs)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if restore_base_module(parent, child_name, new_module, child):  # unload: the original module, untouched
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        if merge:
            raise NotImplementedError(MERGE_ERROR)
        model = super()._unload_and_optionally_merge(merge=False, progressbar=progressbar)
        uninstall_grad_forward(model)
        return model
