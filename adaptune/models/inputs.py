"""Small, deterministic example batches for any family (tests, benchmarks, smoke checks).

    batch = example_batch(spec, processor)          # what `model(**batch)` accepts
    out = model(**batch); t = main_output(spec, out)   # logits / embeddings / mask logits
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from .families import FamilySpec


def example_images(n: int = 2, size: int = 64, seed: int = 0) -> list[Image.Image]:
    """`n` RGB images of random coloured blocks (deterministic)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        images.append(Image.fromarray(blocks).resize((size, size), Image.NEAREST))
    return images


def example_batch(spec: FamilySpec, processor: Any, n: int = 2, size: int = 64, seed: int = 0,
                  prompts: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A processed batch of `n` images (and prompts where the family reads text)."""
    images = example_images(n, size, seed)
    prompts = prompts or ["what colour is the circle", "how many shapes"] * ((n + 1) // 2)
    prompts = prompts[:n]
    if spec.kind == "vlm":
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                add_generation_prompt=True, tokenize=False,
            )
            for p in prompts
        ]
        processor.tokenizer.padding_side = "left"
        return dict(processor(images=[[im] for im in images] if spec.name == "smolvlm" else images, text=texts,
                              return_tensors="pt", padding=True))
    if spec.name == "dinov2":
        return dict(processor(images=images, return_tensors="pt"))
    pad = {"padding": "max_length", "max_length": 16} if spec.name == "siglip" else {"padding": True}
    return dict(processor(text=prompts, images=images, return_tensors="pt", **pad))


def main_output(spec: FamilySpec, outputs: Any) -> torch.Tensor:
    """The tensor a test compares: LM logits, CLIP-style image-text logits, mask logits, or patch features."""
    for name in ("logits", "logits_per_image", "last_hidden_state"):
        value = getattr(outputs, name, None)
        if value is not None:
            return value
    raise ValueError(f"no comparable output in {type(outputs).__name__}")
