"""Seeded tiny instances of the real Hugging Face model classes, with processors built offline.

Every family gets a builder returning `(model, processor)`: the genuine transformers class (Qwen3-VL, Qwen2.5-VL,
LLaVA, Idefics3/SmolVLM, CLIP, SigLIP, DINOv2, CLIPSeg) with a few hundred thousand parameters, and a processor whose
tokenizer was trained locally (see `tokenizer.py`). Tests, recipes and the quickstart use them; nothing downloads.
A VLM's processor carries the ORIGINAL chat template of its family's real checkpoints (`chat_templates.py`), so the
tiny Qwen2.5-VL cannot call tools until adaptune's tool template is applied, exactly like a real checkpoint.

    from adaptune.models import build_tiny
    model, processor = build_tiny("qwen3_vl", seed=0)
    model, processor = build_tiny("qwen3_vl", text={"hidden_size": 128}, vision={"depth": 3})
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    Dinov2Config,
    Dinov2Model,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipConfig,
    SiglipModel,
    SiglipProcessor,
)
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from .chat_templates import original_chat_template
from .processors import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen3VLProcessor
from .tokenizer import build_tokenizer


def _seeded(seed: int, build):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
    return model.eval()


def _merge(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    return {**defaults, **(overrides or {})}


# ----------------------------------------------------------------------------------------------- Qwen-VL family


def qwen_vl_processor(patch_size: int, tokenizer=None, min_pixels: int | None = None, max_pixels: int = 256 * 256,
                      qwen3: bool = True):
    tokenizer = tokenizer or build_tokenizer()
    factor = patch_size * 2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2,
        min_pixels=min_pixels or factor * factor, max_pixels=max_pixels,
    )
    cls = ImageOnlyQwen3VLProcessor if qwen3 else ImageOnlyQwen2_5_VLProcessor
    template = original_chat_template("qwen3_vl" if qwen3 else "qwen2_5_vl")  # what the real checkpoint ships
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _qwen_text(vocab: int, text: dict | None, eos: int | None = None, pad: int | None = None) -> dict:
    return _merge(dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=eos, pad_token_id=pad,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    ), text)


def _vision_token_ids(processor) -> dict[str, int]:
    return dict(
        image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
        vision_start_token_id=processor.vision_start_token_id, vision_end_token_id=processor.vision_end_token_id,
    )


def tiny_qwen3_vl(seed: int = 0, text: dict | None = None, vision: dict | None = None, tokenizer=None,
                  max_pixels: int = 256 * 256):
    """Qwen3-VL: patch 16 with 2x2 merging, so a 128x128 image costs 16 visual tokens and 64x64 costs 4."""
    processor = qwen_vl_processor(16, tokenizer, max_pixels=max_pixels)
    tok = processor.tokenizer
    text_cfg = _qwen_text(len(tok), text, tok.eos_token_id, tok.pad_token_id)
    vision_cfg = _merge(dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
        temporal_patch_size=2, out_hidden_size=text_cfg["hidden_size"], num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    ), vision)
    config = Qwen3VLConfig(text_config=text_cfg, vision_config=vision_cfg, **_vision_token_ids(processor))
    return _seeded(seed, lambda: Qwen3VLForConditionalGeneration(config)), processor


def tiny_qwen2_5_vl(seed: int = 0, text: dict | None = None, vision: dict | None = None, tokenizer=None,
                    max_pixels: int = 224 * 224):
    """Qwen2.5-VL: patch 14 with 2x2 merging (28 px per visual token), windowed vision attention."""
    processor = qwen_vl_processor(14, tokenizer, max_pixels=max_pixels, qwen3=False)
    tok = processor.tokenizer
    text_cfg = _qwen_text(len(tok), text, tok.eos_token_id, tok.pad_token_id)
    vision_cfg = _merge(dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2, out_hidden_size=text_cfg["hidden_size"], window_size=56, fullatt_block_indexes=[1],
    ), vision)
    config = Qwen2_5_VLConfig(text_config=text_cfg, vision_config=vision_cfg, **_vision_token_ids(processor))
    return _seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config)), processor


# ----------------------------------------------------------------------------------------------- LLaVA, Idefics3


def _clip_vision(overrides: dict | None, image_size: int = 32, patch_size: int = 8) -> dict:
    return _merge(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=image_size, patch_size=patch_size, projection_dim=32), overrides)


def _llama_text(vocab: int, overrides: dict | None) -> dict:
    return _merge(dict(model_type="llama", vocab_size=vocab, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048), overrides)


def tiny_llava(seed: int = 0, text: dict | None = None, vision: dict | None = None, tokenizer=None):
    """LLaVA: CLIP vision tower (32 px, patch 8 -> 16 patch tokens) + Llama LM, `<image>` placeholder; like
    LLaVA-1.5 it reads the tower's second-to-last hidden state (`vision_feature_layer=-2`)."""
    tokenizer = tokenizer or build_tokenizer(style="llama")
    vision_cfg = _clip_vision(vision)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": vision_cfg["image_size"]},
        crop_size={"height": vision_cfg["image_size"], "width": vision_cfg["image_size"]},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision_cfg["patch_size"],
        vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1,
        chat_template=original_chat_template("llava_next"),
    )
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **vision_cfg},
        text_config=_llama_text(len(tokenizer), text),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-2,  # LLaVA-1.5's: the second-to-last block
    )
    return _seeded(seed, lambda: LlavaForConditionalGeneration(config)), processor


def tiny_smolvlm(seed: int = 0, text: dict | None = None, vision: dict | None = None, tokenizer=None):
    """SmolVLM / Idefics3: SigLIP-style vision (64 px, patch 8), pixel-shuffle connector (scale 2), Llama LM."""
    tokenizer = tokenizer or build_tokenizer(style="llama")
    image_size = (vision or {}).get("image_size", 64)
    vision_cfg = _merge(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=image_size, patch_size=8), vision)
    scale = 2
    seq_len = (image_size // vision_cfg["patch_size"]) ** 2 // scale**2
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                                  chat_template=original_chat_template("idefics3"))
    config = Idefics3Config(
        vision_config=vision_cfg, text_config=_llama_text(len(tokenizer), text), scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return _seeded(seed, lambda: Idefics3ForConditionalGeneration(config)), processor


# ----------------------------------------------------------------------------------------------- encoders


def _clip_text(vocab: int, overrides: dict | None, eos: int, pad: int) -> dict:
    return _merge(dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=64, projection_dim=32,
                       eos_token_id=eos, pad_token_id=pad, bos_token_id=eos), overrides)


def tiny_clip(seed: int = 0, text: dict | None = None, vision: dict | None = None, tokenizer=None,
              image_size: int = 32, projection_dim: int = 32):
    """CLIP dual encoder; text pooled at <|endoftext|> (the tokenizer appends it)."""
    tokenizer = tokenizer or build_tokenizer(style="clip", model_max_length=64)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    vision_cfg = _clip_vision(vision, image_size=image_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": vision_cfg["image_size"]},
        crop_size={"height": vision_cfg["image_size"], "width": vision_cfg["image_size"]},
    )
    config = CLIPConfig(text_config=_clip_text(len(tokenizer), text, eos, eos), vision_config=vision_cfg,
                        projection_dim=projection_dim)
    return _seeded(seed, lambda: CLIPModel(config)), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_siglip(seed: int = 0, text: dict | None = None, vision: dict | None = None, tokenizer=None):
    """SigLIP dual encoder (sigmoid loss family; no CLS token, attention-pooling head)."""
    tokenizer = tokenizer or build_tokenizer(style="clip", model_max_length=64)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    vision_cfg = _merge(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8), vision)
    text_cfg = _merge(dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, max_position_embeddings=64, pad_token_id=eos, eos_token_id=eos),
                      text)
    image_processor = SiglipImageProcessorPil(size={"height": vision_cfg["image_size"],
                                                    "width": vision_cfg["image_size"]})
    config = SiglipConfig(text_config=text_cfg, vision_config=vision_cfg)
    return _seeded(seed, lambda: SiglipModel(config)), SiglipProcessor(image_processor=image_processor,
                                                                        tokenizer=tokenizer)


def tiny_dinov2(seed: int = 0, vision: dict | None = None, **_: Any):
    """DINOv2 ViT (32 px, patch 8 -> 16 patches + CLS); no text side, so the "processor" is an image processor."""
    cfg = _merge(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=32, patch_size=8), vision)
    image_processor = BitImageProcessorPil(
        size={"shortest_edge": cfg["image_size"]}, crop_size={"height": cfg["image_size"], "width": cfg["image_size"]},
        do_convert_rgb=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    return _seeded(seed, lambda: Dinov2Model(Dinov2Config(**cfg))), image_processor


def tiny_clipseg(seed: int = 0, text: dict | None = None, vision: dict | None = None, tokenizer=None,
                 image_size: int = 64, extract_layers: tuple[int, ...] = (1, 2, 3), reduce_dim: int = 16):
    """CLIPSeg: CLIP encoders + light decoder over `extract_layers` activations; text prompt -> mask logits."""
    tokenizer = tokenizer or build_tokenizer(style="clip", model_max_length=64)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    depth = max(extract_layers) + 1
    vision_cfg = _clip_vision(_merge({"num_hidden_layers": depth}, vision), image_size=image_size)
    text_cfg = _clip_text(len(tokenizer), _merge({"num_hidden_layers": depth}, text), eos, eos)
    image_processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size},
                                           image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    config = CLIPSegConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=32,
                           extract_layers=list(extract_layers), reduce_dim=reduce_dim, decoder_num_attention_heads=2,
                           decoder_intermediate_size=64)
    return (_seeded(seed, lambda: CLIPSegForImageSegmentation(config)),
            CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer))
