"""`FlexProjectorModel`: the PEFT tuner that installs TokenFLEX into Qwen3-VL, Qwen2.5-VL, LLaVA and SmolVLM.

What it does besides swapping the module (see `layer.py` for the math):
- records the base model's family and projector widths in the config, and refuses a model that differs (an adapter
  saved on one family or size gives a message saying what differs instead of a shape error deep in `load_state_dict`);
- registers a listener for the per-call budget inputs (`adaptune.budget.inputs`, shared with the token reducers):
  `vision_grid_thw` (Qwen-VL: the real patch grid, while `image_grid_thw` carries the pooled grid the language side and
  M-RoPE must see) and the number of image placeholder tokens (LLaVA/SmolVLM: the budget itself), read off the inputs
  by a forward pre-hook and kept for the whole of a `generate()` call; the listener hands them to the layers.

    import adaptune
    from peft import get_peft_model
    model = get_peft_model(base, FlexProjectorConfig())
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ...budget.inputs import BudgetCall, add_budget_listener, image_token_id, remove_budget_listener  # noqa: F401
from ...models import detect_family
from .._peft_ext import restore_base_module, roll_back_on_failure
from .config import FlexProjectorConfig
from .layer import FlexProjectorLayer, FlexVisionTowerLayer, _FlexLayerMixin

SUPPORTED_FAMILIES = ("qwen3_vl", "qwen2_5_vl", "llava", "smolvlm")
_CONTAINERS = ("flex_projector",)


def _flex_layers(model: nn.Module) -> list[_FlexLayerMixin]:
    return [m for m in model.modules() if isinstance(m, _FlexLayerMixin)]


def _flex_listener(model: nn.Module, call: BudgetCall | None) -> None:
    """Hand the per-call budget inputs (or None at the end of a call) to the TokenFLEX layers."""
    for layer in _flex_layers(model):
        layer._vision_grid = call.vision_grid if call is not None else None
        layer._placeholders = call.placeholders if call is not None else None


def install_flex_hooks(model: nn.Module) -> None:
    """Idempotently add the budget-input hooks and the budget-aware `generate` to `model` (`adaptune.budget.inputs`)."""
    add_budget_listener(model, "flex_projector", _flex_listener)


def remove_flex_hooks(model: nn.Module) -> None:
    remove_budget_listener(model, "flex_projector")


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
        with roll_back_on_failure(self, model, adapter_name):
            self._resolve_config(model, self.peft_config[adapter_name])
            super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                                   low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        install_flex_hooks(model)

    def _create_and_replace(self, peft_config: FlexProjectorConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str,
                            parameter_name: str | None = None) -> None:
        geo = self._flex_geometry
        norm_budgets = peft_config.budgets if peft_config.per_budget_norm else ()
        if isinstance(target, _FlexLayerMixin):
            target.update_layer(adapter_name, geo["in_dim"], geo["out_dim"], peft_config.hidden_mult, norm_budgets)
            return
        family = peft_config.base_family
        if family in ("qwen3_vl", "qwen2_5_vl"):
            layer = FlexVisionTowerLayer(target, adapter_name, peft_config.hidden_mult, peft_config.deepstack,
                                         windowed=family == "qwen2_5_vl", norm_budgets=norm_budgets)
        else:
            layer = FlexProjectorLayer(target, adapter_name, geo["in_dim"], geo["out_dim"], peft_config.hidden_mult,
                                       default_divisor=geo["divisor"], norm_budgets=norm_budgets)
        self._replace_module(parent, target_name, layer, target)

    # ---------------------------------------------------------------------------------------- merge / unload
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate one adapter. Several at once are refused here, before any forward: each replaces the same
        projector."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) > 1:
            raise ValueError(f"TokenFLEX supports one active adapter at a time, got {names}: each adapter replaces the "
                             "same projector. Activate one with set_adapter(name)")
        super().set_adapter(adapter_name, inference_mode=inference_mode)

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
        if restore_base_module(parent, child_name, new_module, child):  # unload: the original module, untouched
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
