"""`RegistersModel`: the PEFT tuner that adds PH-Reg registers to a ViT (CLIP, SigLIP, DINOv2, CLIPSeg's CLIP, the
CLIP tower inside LLaVA).

It finds the ViT under the family's vision path (its `embeddings` and the blocks of its `encoder`), wraps the
embeddings and the feature block (see `layer.py`): the block whose output the model reads, which is the last block
except where the family reads an earlier layer (LLaVA-1.5: `vision_feature_layer=-2`, the second-to-last block; the
blocks after it get no registers and are not trained, since nothing the VLM uses depends on them). It records the
family, the ViT sizes and the feature block in the config so that loading the adapter onto a different model fails
with a message saying what differs.

Not supported, with a clear error: Qwen-VL (its vision tower packs all images into one sequence with variable-length
attention boundaries and 2-D rotary positions per patch, so registers would need per-image insertion and cu_seqlens
surgery) and SmolVLM/Idefics3 (its vision attention takes a per-patch padding mask).

    import adaptune
    from peft import get_peft_model
    model = get_peft_model(clip, RegistersConfig(num_registers=16))
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from ...models import detect_family, get_family
from .._peft_ext import restore_base_module, roll_back_on_failure
from .config import RegistersConfig
from .layer import RegisterBlockLayer, RegisterEmbeddingLayer, _RegisterLayerMixin

SUPPORTED_FAMILIES = ("clip", "siglip", "dinov2", "clipseg", "llava")
_UNSUPPORTED = {
    "qwen3_vl": "its vision tower packs every image into one sequence with variable-length attention (cu_seqlens) "
                "and 2-D rotary positions per patch; registers would need per-image insertion and cu_seqlens surgery",
    "qwen2_5_vl": "its vision tower packs every image into one sequence with windowed variable-length attention; "
                  "registers would need per-image insertion into every window",
    "smolvlm": "its vision attention takes a per-patch padding mask that has no slot for extra tokens",
}
_CONTAINERS = ("reg_tokens", "reg_unlocked")


def _unwrapped(module: nn.Module | None) -> nn.Module | None:
    """The original module under a tuner layer (a second adapter is resolved on an already wrapped ViT)."""
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def feature_block_index(num_blocks: int, layer: int | None) -> int:
    """The block whose output is hidden state `layer` (an index into `hidden_states`, which holds the embeddings
    then each block's output; None: the tower's output, i.e. the last block).

    >>> feature_block_index(24, -2), feature_block_index(24, None), feature_block_index(24, 3)
    (22, 23, 2)
    """
    if layer is None:
        return num_blocks - 1
    index = layer + num_blocks + 1 if layer < 0 else layer
    if not 1 <= index <= num_blocks:
        raise ValueError(f"the model reads vision hidden state {layer} of {num_blocks + 1} (the embeddings and "
                         f"{num_blocks} blocks); PH-Reg needs it to be the output of a block")
    return index - 1


def find_vit(model: nn.Module, family: str) -> dict[str, Any]:
    """Paths and facts of the ViT inside `model` (seen through any tuner layers already wrapping it): embeddings,
    the feature block (the block whose output the model reads: the last one, or on LLaVA the one of
    `vision_feature_layer`), prefix tokens, sizes, and the names of the parameters `unlock` copies."""
    spec = get_family(family)
    root_path = spec.vision_path
    root = model.get_submodule(root_path) if root_path else model
    embeddings = _unwrapped(getattr(root, "embeddings", None))
    encoder = getattr(root, "encoder", None)
    blocks = next((getattr(encoder, n) for n in ("layers", "layer") if isinstance(getattr(encoder, n, None),
                                                                                  nn.ModuleList)), None)
    if embeddings is None or blocks is None or len(blocks) == 0:
        raise ValueError(f"could not find a ViT (embeddings + encoder blocks) under {root_path or 'the model'!r}")
    feature_layer = spec.vision_feature_layer(model)
    block_index = feature_block_index(len(blocks), feature_layer)
    feature_block = _unwrapped(blocks[block_index])
    prefix = f"{root_path}." if root_path else ""
    blocks_name = "layers" if isinstance(getattr(encoder, "layers", None), nn.ModuleList) else "layer"
    conv = [n for n, m in embeddings.named_modules() if isinstance(m, nn.Conv2d)]
    return {
        "embeddings": f"{prefix}embeddings",
        "feature_block": f"{prefix}encoder.{blocks_name}.{block_index}",
        "feature_block_index": block_index,
        "feature_layer": feature_layer,
        "num_prefix": int(any(hasattr(embeddings, n) for n in ("class_embedding", "cls_token"))),
        "hidden_size": int(root.config.hidden_size),
        "layers": len(blocks),
        "patch_params": [n for n, _ in embeddings.named_parameters()
                         if any(n.startswith(f"{c}.") for c in conv)],
        "position_params": [n for n, _ in embeddings.named_parameters() if "position" in n],
        "block_params": [n for n, _ in feature_block.named_parameters()],
        "patch_size": int(getattr(root.config, "patch_size", 0) or 0),
    }


class RegistersModel(BaseTuner):
    """PEFT tuner for PH-Reg; created by `get_peft_model(model, RegistersConfig(...))`."""

    prefix: str = "reg_"
    tuner_layer_cls = _RegisterLayerMixin
    target_module_mapping: dict[str, list[str]] = {}

    def _resolve_config(self, model: nn.Module, config: RegistersConfig) -> None:
        family = detect_family(model).name
        if family in _UNSUPPORTED:
            raise ValueError(f"PH-Reg registers are not supported on {family}: {_UNSUPPORTED[family]}. Supported "
                             f"families: {', '.join(SUPPORTED_FAMILIES)}")
        if family not in SUPPORTED_FAMILIES:
            raise ValueError(f"PH-Reg registers support {', '.join(SUPPORTED_FAMILIES)}, not {family!r}")
        vit = find_vit(model, family)
        found = {"base_family": family, "vision_hidden_size": vit["hidden_size"], "vision_layers": vit["layers"],
                 "feature_block": vit["feature_block_index"]}
        recorded = {k: getattr(config, k) for k in found}
        differs = [f"{k} {recorded[k]} vs {found[k]}" for k in found
                   if recorded[k] is not None and recorded[k] != found[k]]
        if differs:
            raise ValueError("this PH-Reg adapter does not fit the model (adapter vs model): " + "; ".join(differs)
                             + ". Load it onto the base model it was trained on.")
        for key, value in found.items():
            setattr(config, key, value)
        if config.target_modules is None:
            config.target_modules = [vit["embeddings"], vit["feature_block"]]
        self._vit = vit

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        with roll_back_on_failure(self, model, adapter_name):
            self._resolve_config(model, self.peft_config[adapter_name])
            super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                                   low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)

    def _create_and_replace(self, peft_config: RegistersConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str,
                            parameter_name: str | None = None) -> None:
        vit = self._vit
        unlock = set(peft_config.unlock)
        if current_key == vit["embeddings"]:
            names = (vit["patch_params"] if "patch_embedding" in unlock else []) + (
                vit["position_params"] if "position_embeddings" in unlock else [])
            if isinstance(target, RegisterEmbeddingLayer):
                target.update_layer(adapter_name, peft_config.num_registers, vit["hidden_size"], names,
                                    peft_config.init_std)
                return
            layer = RegisterEmbeddingLayer(target, adapter_name, vit["num_prefix"], peft_config.num_registers,
                                           vit["hidden_size"], names, peft_config.init_std)
        elif current_key == vit["feature_block"]:
            names = vit["block_params"] if "last_block" in unlock else []
            if isinstance(target, RegisterBlockLayer):
                target.update_layer(adapter_name, peft_config.num_registers, names)
                return
            layer = RegisterBlockLayer(target, adapter_name, vit["num_prefix"], peft_config.num_registers, names)
        else:
            raise ValueError(f"PH-Reg only wraps the ViT embeddings and the block whose output the model reads "
                             f"({vit['feature_block']}), not {current_key!r} (leave target_modules unset)")
        self._replace_module(parent, target_name, layer, target)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate one adapter. Several at once are refused here, before any forward: each inserts its own register
        tokens and its own copies of the same weights."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) > 1:
            raise ValueError(f"PH-Reg supports one active adapter at a time, got {names}: each adapter inserts its own "
                             "register tokens and its own copies of the same weights. Activate one with "
                             "set_adapter(name)")
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(
            "PH-Reg cannot be merged into the base weights: register tokens are extra sequence positions. Keep the "
            "adapter loaded (PeftModel.from_pretrained), or call unload() to get the original model back.")

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        return super()._unload_and_optionally_merge(merge=False, progressbar=progressbar)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if restore_base_module(parent, child_name, new_module, child):
            return
        super()._replace_module(parent, child_name, new_module, child)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        for container in _CONTAINERS:
            token = f".{container}.{adapter_name}"
            if f"{token}." in key or key.endswith(token):
                return key.replace(token, f".{container}", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)
