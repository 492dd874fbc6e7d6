"""`FlexProjectorModel`: the PEFT tuner that installs TokenFLEX into Qwen3-VL, Qwen2.5-VL, LLaVA and SmolVLM.

What it does besides swapping the module (see `layer.py` for the math):
- records the base model's family and projector widths in the config, and refuses a model that differs (an adapter
  saved on one family or size gives a message saying what differs instead of a shape error deep in `load_state_dict`);
- installs a forward pre-hook on the wrapped Hugging Face model that takes the per-call budget information off the
  inputs: `vision_grid_thw` (Qwen-VL: the real patch grid, while `image_grid_thw` carries the pooled grid the language
  side and M-RoPE must see) and the number of image placeholder tokens (LLaVA/SmolVLM: the budget itself);
- gives the model a `generate()` that accepts `vision_grid_thw` and keeps the budget stashed for the whole call
  (Hugging Face rejects unknown generate kwargs, and encodes images before the first forward).

    import adaptune
    from peft import get_peft_model
    model = get_peft_model(base, FlexProjectorConfig())
"""

from __future__ import annotations

import types
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ...models import detect_family
from .config import FlexProjectorConfig
from .layer import FlexProjectorLayer, FlexVisionTowerLayer, _FlexLayerMixin

SUPPORTED_FAMILIES = ("qwen3_vl", "qwen2_5_vl", "llava", "smolvlm")
_CONTAINERS = ("flex_projector",)


def image_token_id(config: Any) -> int | None:
    """The image placeholder id of a VLM config (the attribute name differs between families)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def _flex_layers(model: nn.Module) -> list[_FlexLayerMixin]:
    return [m for m in model.modules() if isinstance(m, _FlexLayerMixin)]


def _placeholder_count(model: nn.Module, input_ids: torch.Tensor | None, pixel_values: Any) -> int | None:
    token_id = image_token_id(model.config)
    if pixel_values is None or input_ids is None or token_id is None:
        return None
    return int((input_ids == token_id).sum())


def _stash(model: nn.Module, vision_grid: torch.Tensor | None, count: int | None, scoped: bool | None = None) -> None:
    for layer in _flex_layers(model):
        layer._vision_grid = vision_grid
        layer._placeholders = count
        if scoped is not None:
            layer._scoped = scoped


def _is_scoped(model: nn.Module) -> bool:
    return any(getattr(layer, "_scoped", False) for layer in _flex_layers(model))


def _flex_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Take the per-call budget inputs off the model inputs and hand them to the TokenFLEX layers."""
    vision_grid = kwargs.pop("vision_grid_thw", None)
    pixel_values = kwargs.get("pixel_values")
    if pixel_values is not None and not _is_scoped(module):
        _stash(module, vision_grid, _placeholder_count(module, kwargs.get("input_ids", args[0] if args else None),
                                                       pixel_values))
    return args, kwargs


def _flex_post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    if kwargs.get("pixel_values") is not None and not _is_scoped(module):
        _stash(module, None, None)


def _flex_generate(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """`generate` that accepts `vision_grid_thw`: the budget inputs stay stashed for the whole call (Hugging Face
    encodes the images before the first forward, through `get_image_features`, which no forward hook sees)."""
    vision_grid = kwargs.pop("vision_grid_thw", None)
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    _stash(self, vision_grid, _placeholder_count(self, input_ids, kwargs.get("pixel_values")), scoped=True)
    try:
        return type(self).generate(self, *args, **kwargs)
    finally:
        _stash(self, None, None, scoped=False)


def install_flex_hooks(model: nn.Module) -> None:
    """Idempotently add the input pre-hook, the clean-up hook and the budget-aware `generate` to `model`."""
    if not any(hook is _flex_pre_hook for hook in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(_flex_pre_hook, with_kwargs=True)
        model.register_forward_hook(_flex_post_hook, with_kwargs=True, always_call=True)
    if hasattr(type(model), "generate"):
        model.generate = types.MethodType(_flex_generate, model)


def remove_flex_hooks(model: nn.Module) -> None:
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key in [k for k, hook in hooks.items() if hook in (_flex_pre_hook, _flex_post_hook)]:
            del hooks[key]
    for registry in ("_forward_hooks_always_called", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
        table = getattr(model, registry, None)
        if table is not None:
            for key in [k for k in table if k not in model._forward_hooks and k not in model._forward_pre_hooks]:
                del table[key]
    model.__dict__.pop("generate", None)


def _geometry(model: nn.Module, family: str) -> dict[str, Any]:
    """Target module path, projector widths and default budget divisor of a supported model."""
    from ...models import get_family

    spec = get_family(family)
    config = model.config
    if family in ("qwen3_vl", "qwen2_5_vl"):
        vision = config.vision_config
        return {"target": spec.vision_path, "in_dim": int(vision.hidden_size), "out_dim": int(vision.out_hidden_size),
                "divisor": int(vision.spatial_merge_size) ** 2}
    text_hidden = int(config.text_config.hidden_size)
    vision_hidden = int(config.vision_config.hidden_size)
    if family == "llava":
        layers = config.vision_feature_layer
        n_layers = len(layers) if isinstance(layers, (list, tuple)) else 1
        return {"target": spec.projector_path, "in_dim": vision_hidden * n_layers, "out_dim": text_hidden,
                "divisor": 1}
    scale = int(getattr(config, "scale_factor", 2))
    return {"target": spec.projector_path, "in_dim": vision_hidden, "out_dim": text_hidden, "divisor": scale * scale}


class FlexProjectorModel(BaseTuner):
    """PEFT tuner for TokenFLEX; created by `get_peft_model(model, FlexProjectorConfig(...))`."""

    prefix: str = "flex_"
    tuner_layer_cls = _FlexLayerMixin
    target_module_mapping: dict[str, list[str]] = {}

    # ------------------------------------------------------------------------------------------------ injection
    def _resolve_config(self, model: nn.Module, config: FlexProjectorConfig) -> None:
        try:
            family = detect_family(model).name
        except ValueError as exc:
            raise ValueError(f"TokenFLEX supports {', '.join(SUPPORTED_FAMILIES)}; {exc}") from None
        if family not in SUPPORTED_FAMILIES:
            raise ValueError(f"TokenFLEX supports the VLM families {', '.join(SUPPORTED_FAMILIES)}, not {family!r} "
                             "(it replaces the projector between a vision tower and a language model)")
        geo = _geometry(model, family)
        found = {"base_family": family, "vision_hidden_size": geo["in_dim"], "text_hidden_size": geo["out_dim"]}
        recorded = {k: getattr(config, k) for k in found}
        differs = [k for k, v in recorded.items() if v is not None and v != found[k]]
        if differs:
            raise ValueError(
                "this TokenFLEX adapter does not fit the model: it was created on "
                f"{recorded['base_family']} (projector {recorded['vision_hidden_size']} -> "
                f"{recorded['text_hidden_size']}), the model is {family} (projector {geo['in_dim']} -> "
                f"{geo['out_dim']}); differs: {', '.join(differs)}. Load it onto the base model it was trained on.")
        for key, value in found.items():
            setattr(config, key, value)
        if config.target_modules is None:
            config.target_modules = [geo["target"]]
        self._flex_geometry = geo

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        self._resolve_config(model, self.peft_config[adapter_name])
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                               low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        install_flex_hooks(model)

    def _create_and_replace(self, peft_config: FlexProjectorConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str,
                            parameter_name: str | None = None) -> None:
        geo = self._flex_geometry
        if isinstance(target, _FlexLayerMixin):
            target.update_layer(adapter_name, geo["in_dim"], geo["out_dim"], peft_config.hidden_mult)
            return
        family = peft_config.base_family
        if family in ("qwen3_vl", "qwen2_5_vl"):
            layer = FlexVisionTowerLayer(target, adapter_name, peft_config.hidden_mult, peft_config.deepstack,
                                         windowed=family == "qwen2_5_vl")
        else:
            layer = FlexProjectorLayer(target, adapter_name, geo["in_dim"], geo["out_dim"], peft_config.hidden_mult,
                                       default_divisor=geo["divisor"])
        self._replace_module(parent, target_name, layer, target)

    # ---------------------------------------------------------------------------------------- merge / unload
    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(
            "TokenFLEX cannot be merged into the base weights: it replaces the projector with a different module. "
            "Keep the adapter loaded (PeftModel.from_pretrained), or call unload() to get the original model back.")

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        model = super()._unload_and_optionally_merge(merge=False, progressbar=progressbar)
        remove_flex_hooks(model)
        return model

    # ---------------------------------------------------------------------------------------- state dict keys
    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if isinstance(child, _FlexLayerMixin) and new_module is child.get_base_layer():
            # unload: put the original module back as it was
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # adapter weights live one level deeper than LoRA's (`flex_projector.<name>.norm.weight`)
        for container in _CONTAINERS:
            token = f".{container}.{adapter_name}."
            if token in key:
                return key.replace(token, f".{container}.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)
