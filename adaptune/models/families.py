"""One description per model family: where its parts live and what an image costs.

Every adapter and the RL code go through this layer instead of hard-coding module paths, so supporting a new family
is one `FamilySpec` registered here (plus a tiny builder for the tests).

    from adaptune.models import get_family, detect_family
    spec = detect_family(model)                  # from the config's model_type
    spec.get_module(model, "projector")          # the Qwen3-VL merger, the LLaVA projector, ...
    spec.visual_tokens(processor, 128, 128)      # placeholder tokens one 128x128 image costs
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..registry import FAMILIES
from . import tiny

Kind = Literal["vlm", "encoder", "segmentation"]


class UnsupportedModelError(ValueError):
    """Raised for a model or config that no registered family describes."""


@dataclass(frozen=True)
class FamilySpec:
    """Where a family's parts live (dotted paths from the top-level model) and how images turn into tokens."""

    name: str
    kind: Kind
    model_types: tuple[str, ...]
    model_class: str
    vision_path: str
    projector_path: str | None = None
    language_model_path: str | None = None
    image_token: str | None = None
    supports_tools: bool = False
    """The real checkpoint can run the resize tool in GRPO: with its own template or with `tool_template`."""
    chat_template: str | None = None
    """The original template of the family's checkpoints (a file in TRL's `chat_templates/`); the tiny builder's."""
    tool_template: str | None = None
    """adaptune's tool-calling template for the family (`models/chat_templates.py`), used when the checkpoint's own
    cannot run the resize tool and `model.chat_template` is unset."""
    vision_blocks_path: str | None = None
    feature_layer_key: str | None = None
    """The model-config attribute naming the vision hidden state the VLM reads (LLaVA: `vision_feature_layer`);
    None: the vision tower's output (`last_hidden_state`)."""
    input_embeddings_path: str | None = None
    """The module `get_input_embeddings()` should return where the transformers class raises NotImplementedError
    (CLIPModel, CLIPSeg): the text tower's embeddings block, which maps input ids to hidden states. accelerate's FSDP 2
    preparation calls it on every model (`fsdp2_prepare_model`) and shards what it gets as a group of its own unless
    it is one already; the block is one (it is in the class's `_no_split_modules`, which transformer-based wrapping
    shards first), whereas the token embedding inside it would be sharded twice (torch refuses: its weight is already
    a DTensor). `expose_input_embeddings` installs it on the instance."""
    build_tiny: Callable[..., tuple[torch.nn.Module, Any]] | None = field(default=None, repr=False)
    description: str = ""

    def get_module(self, model: torch.nn.Module, part: str) -> torch.nn.Module:
        """Return the `part` ("vision", "projector", "language_model", "vision_blocks") of `model`."""
        path = getattr(self, f"{part}_path", None)
        if path is None:
            raise ValueError(f"family {self.name!r} has no {part!r}")
        return model.get_submodule(path)

    def expose_input_embeddings(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` whose `get_input_embeddings()` returns `input_embeddings_path` when its class does not say; a class
        that answers (or a family without the path) is left alone. Returns `model`."""
        if self.input_embeddings_path is None:
            return model
        try:
            model.get_input_embeddings()
            return model
        except NotImplementedError:
            pass
        model.get_submodule(self.input_embeddings_path)  # a wrong path fails here, not inside accelerate
        # an instance attribute, not a module (nothing enters the state dict); a deep copy of the model stays bound
        model.get_input_embeddings = functools.partial(_submodule, model, self.input_embeddings_path)
        return model

    def vision_feature_layer(self, model: torch.nn.Module) -> int | None:
        """The index into the vision tower's `hidden_states` that `model` reads (LLaVA-1.5: -2, the second-to-last
        block), or None when it reads the tower's output. A list of layers is refused (one target layer only)."""
        if self.feature_layer_key is None:
            return None
        layer = getattr(model.config, self.feature_layer_key)
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ValueError(f"{self.name}: config.{self.feature_layer_key}={layer!r}; only a single layer index is "
                             "supported here")
        return layer

    def visual_tokens(self, processor: Any, height: int, width: int) -> int:
        """Visual tokens one image of `height` x `width` pixels costs (placeholder tokens for VLMs, patch tokens for
        encoders)."""
        image_processor = getattr(processor, "image_processor", processor)
        if hasattr(processor, "image_seq_len") and not getattr(image_processor, "do_image_splitting", True):
            return int(processor.image_seq_len)  # Idefics3 without tiling: one image, image_seq_len placeholders
        if hasattr(processor, "_get_num_multimodal_tokens"):
            data = processor._get_num_multimodal_tokens(image_sizes=[[height, width]])
            return int(data["num_image_tokens"][0])
        size = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None) or {}
        side_h = size.get("height") or size.get("shortest_edge")
        side_w = size.get("width") or size.get("shortest_edge")
        patch = getattr(image_processor, "patch_size", None) or 8
        if isinstance(patch, dict):
            patch = patch.get("height", 8)
        return int((side_h // patch) * (side_w // patch))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "model_types": list(self.model_types),
            "model_class": self.model_class, "vision": self.vision_path, "projector": self.projector_path,
            "language_model": self.language_model_path, "image_token": self.image_token,
            "supports_tools": self.supports_tools, "chat_template": self.chat_template,
            "tool_template": self.tool_template, "description": self.description,
        }


def _submodule(model: torch.nn.Module, path: str) -> torch.nn.Module:
    return model.get_submodule(path)


def register_family(spec: FamilySpec) -> FamilySpec:
    FAMILIES.register(spec.name, spec)
    return spec


register_family(FamilySpec(
    name="qwen3_vl", kind="vlm", model_types=("qwen3_vl",), model_class="Qwen3VLForConditionalGeneration",
    vision_path="model.visual", projector_path="model.visual.merger", language_model_path="model.language_model",
    vision_blocks_path="model.visual.blocks", image_token="<|image_pad|>", supports_tools=True,
    chat_template="qwen3_vl", tool_template="qwen3_vl_tools", build_tiny=tiny.tiny_qwen3_vl,
    description="Qwen3-VL (default): patch 16, 2x2 merger, M-RoPE, deepstack; its own template calls tools",
))
register_family(FamilySpec(
    name="qwen2_5_vl", kind="vlm", model_types=("qwen2_5_vl",), model_class="Qwen2_5_VLForConditionalGeneration",
    vision_path="model.visual", projector_path="model.visual.merger", language_model_path="model.language_model",
    vision_blocks_path="model.visual.blocks", image_token="<|image_pad|>", supports_tools=True,
    chat_template="qwen2_5_vl", tool_template="qwen2_5_vl_tools", build_tiny=tiny.tiny_qwen2_5_vl,
    description="Qwen2.5-VL: patch 14, 2x2 merger, windowed vision attention, M-RoPE; tools via adaptune's template",
))
register_family(FamilySpec(
    name="llava", kind="vlm", model_types=("llava",), model_class="LlavaForConditionalGeneration",
    vision_path="model.vision_tower", projector_path="model.multi_modal_projector",
    language_model_path="model.language_model", vision_blocks_path="model.vision_tower.encoder.layers",
    feature_layer_key="vision_feature_layer",
    image_token="<image>", supports_tools=False, chat_template="llava_next", build_tiny=tiny.tiny_llava,
    description="LLaVA: CLIP vision tower + MLP projector + Llama-style LM",
))
register_family(FamilySpec(
    name="smolvlm", kind="vlm", model_types=("idefics3", "smolvlm"), model_class="Idefics3ForConditionalGeneration",
    vision_path="model.vision_model", projector_path="model.connector", language_model_path="model.text_model",
    vision_blocks_path="model.vision_model.encoder.layers", image_token="<image>", supports_tools=False,
    chat_template="idefics3", build_tiny=tiny.tiny_smolvlm,
    description="SmolVLM / Idefics3: SigLIP-style vision, pixel-shuffle connector, Llama-style LM",
))
register_family(FamilySpec(
    name="clip", kind="encoder", model_types=("clip",), model_class="CLIPModel", vision_path="vision_model",
    vision_blocks_path="vision_model.encoder.layers", build_tiny=tiny.tiny_clip,
    input_embeddings_path="text_model.embeddings",
    description="CLIP dual encoder (zero-shot classification, vision tower for PH-Reg / mask tuning)",
))
register_family(FamilySpec(
    name="siglip", kind="encoder", model_types=("siglip",), model_class="SiglipModel", vision_path="vision_model",
    vision_blocks_path="vision_model.encoder.layers", build_tiny=tiny.tiny_siglip,
    description="SigLIP dual encoder (no CLS token)",
))
register_family(FamilySpec(
    name="dinov2", kind="encoder", model_types=("dinov2",), model_class="Dinov2Model", vision_path="",
    vision_blocks_path="encoder.layer", build_tiny=tiny.tiny_dinov2,
    description="DINOv2 self-supervised ViT (dense features)",
))
register_family(FamilySpec(
    name="clipseg", kind="segmentation", model_types=("clipseg",), model_class="CLIPSegForImageSegmentation",
    vision_path="clip.vision_model", vision_blocks_path="clip.vision_model.encoder.layers",
    build_tiny=tiny.tiny_clipseg, input_embeddings_path="clip.text_model.embeddings",
    description="CLIPSeg: CLIP encoders + light decoder, text prompt -> segmentation mask",
))


def get_family(name: str) -> FamilySpec:
    """The registered family called `name`; the error lists the supported ones."""
    if name not in FAMILIES:
        raise UnsupportedModelError(f"unknown model family {name!r}; supported families: {', '.join(FAMILIES)}")
    return FAMILIES.get(name)


def detect_family(model_or_config: Any) -> FamilySpec:
    """The family of a model, a config, or a `config.json` dict, from its `model_type`."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    for _, spec in FAMILIES.items():
        if model_type in spec.model_types:
            return spec
    raise UnsupportedModelError(
        f"model_type {model_type!r} is not supported; supported families: "
        + ", ".join(f"{n} ({'/'.join(s.model_types)})" for n, s in FAMILIES.items())
    )


def build_tiny(family: str = "qwen3_vl", seed: int = 0, **overrides: Any) -> tuple[torch.nn.Module, Any]:
    """A seeded tiny instance of `family`'s real transformers class and its offline processor."""
    spec = get_family(family)
    model, processor = spec.build_tiny(seed=seed, **overrides)
    return spec.expose_input_embeddings(model), processor
