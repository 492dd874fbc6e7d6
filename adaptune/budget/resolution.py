"""The one downsampling function of adaptune, and what an image costs in visual tokens.

Every place that shows a model a "low-resolution" image goes through `downsample`: the GlyphQA half-resolution
evaluation, the SFT tasks' `resolution: half`, the GRPO data and environment, the two-turn inference loop and the
benchmarks. Before this module existed there were three copies with two filters (BOX and BILINEAR), so "half" in SFT
evaluation was not "half" in RL.

The filter is `Image.BOX`, a plain area average: each output pixel is the mean of the input pixels it covers (what a
sensor with bigger pixels records). With an integer factor (0.5 on an even size) that is an exact block mean; a
7 px GlyphQA digit becomes ~3.5 px of blur while flat shapes keep their colour.

    >>> from PIL import Image
    >>> downsample(Image.new("RGB", (128, 96)), 0.5).size
    (64, 48)
    >>> downsample(Image.new("RGB", (9, 9)), 0.5).size     # rounded, never below 1 px
    (4, 4)

`image_tokens(family, processor, image)` asks the family (through the processor's own resize rules) how many visual
tokens an image costs, so token accounting never hard-codes "16 at full, 4 at half".
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from .grid import budget_tokens

DOWNSAMPLE_FILTER = Image.Resampling.BOX


def downsample(image: Image.Image, factor: float = 0.5) -> Image.Image:
    """Scale width and height by `factor` in (0, 1] with an area (BOX) filter; RGB out. 0.5 = a quarter of the pixels.

    Sizes are rounded to the nearest pixel (at least 1). `factor == 1` returns the image converted to RGB.
    """
    if isinstance(factor, bool) or not 0.0 < float(factor) <= 1.0:
        raise ValueError(f"downsample factor must be in (0, 1], got {factor!r}")
    image = image.convert("RGB")
    if factor == 1.0:
        return image
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, DOWNSAMPLE_FILTER)


def image_tokens(family: Any, processor: Any, image: Image.Image | tuple[int, int]) -> int:
    """Visual tokens one image (or a `(width, height)` size) costs on `family` with `processor`.

    A `BudgetProcessor` with a budget set emits exactly that many placeholders per image, whatever the size.
    """
    budget = getattr(processor, "budget", None)
    if budget is not None:
        return budget_tokens(budget)
    width, height = image.size if isinstance(image, Image.Image) else image
    return int(family.visual_tokens(processor, height, width))


class TokenCounter:
    """`image_tokens` with a per-size cache (the processor's resize rules are pure in the image size)."""

    def __init__(self, family: Any, processor: Any) -> None:
        self.family, self.processor = family, processor
        self._cache: dict[tuple[int, int], int] = {}

    def __call__(self, image: Image.Image | tuple[int, int]) -> int:
        size = image.size if isinstance(image, Image.Image) else tuple(image)
        if size not in self._cache:
            self._cache[size] = image_tokens(self.family, self.processor, size)  # type: ignore[arg-type]
        return self._cache[size]
