"""Image-only processors for the Qwen-VL families.

`Qwen3VLProcessor` and `Qwen2_5_VLProcessor` insist on a video processor, and the video processors need torchvision,
which does not import next to the CPU torch wheel these machines use. adaptune never feeds videos, so these subclasses
drop the video slot deliberately (instead of passing a broken placeholder): everything else, chat templates and image
placeholder expansion included, is the upstream code. With torchvision installed, `AutoProcessor` works as usual and
the loader prefers it.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin


def _set_qwen_vision_tokens(processor: Any, tokenizer: Any) -> None:
    names = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    for attr, default in names.items():
        token = getattr(tokenizer, attr, None) or default
        setattr(processor, attr, token)
        setattr(processor, f"{attr}_id", tokenizer.convert_tokens_to_ids(token))


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """`Qwen3VLProcessor` without a video processor (images and text only)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs):
        _set_qwen_vision_tokens(self, tokenizer)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor (images and text only)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs):
        _set_qwen_vision_tokens(self, tokenizer)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
