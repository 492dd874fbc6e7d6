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

Input images go through `adaptune.data.validate.prepare_image` (mode conversion with alpha on white, 16-bit
rescaled, bomb / aspect checks naming the row), without its small-image upscaling: "half" of a 9 px image is 4 px.

Pixel cap: a processor caps the pixels it encodes (Qwen-VL: `max_pixels` / `longest_edge`); an image above the cap
is shrunk to it, so once the full image exceeds it by 4x or more, the half-resolution view costs as many visual
tokens as the full one and a resolution policy has nothing to save. `check_downsample_saves` WARNS about that
(`PixelCapWarning`, naming the sizes, the token counts and the fix: downscale the full images to the processor's
cap first); the GRPO trainer, the environment and the two-turn loop call it. It warns rather than refuses because
a dataset with a few oversized images is still usable; the warning says how many images are affected.

`image_tokens(family, processor, image)` asks the family (through the processor's own resize rules) how many visual
tokens an image costs, so token accounting never hard-codes "16 at full, 4 at half".
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from PIL import Image

from ..data.validate import InputPolicy, prepare_image
from .grid import budget_tokens

DOWNSAMPLE_FILTER = Image.Resampling.BOX
NO_UPSCALE = InputPolicy(min_side=1)


class PixelCapWarning(UserWarning):
    """A downsampled image costs as many visual tokens as the full one (the processor's pixel cap)."""


def downsample(image: Any, factor: float = 0.5, row: Any = None) -> Image.Image:
    """Scale width and height by `factor` in (0, 1] with an area (BOX) filter; RGB out. 0.5 = a quarter of the pixels.

    Sizes are rounded to the nearest pixel (at least 1). `factor == 1` returns the validated RGB image. `image` is
    anything `prepare_image` takes; an `InputError` names `row`.
    """
    if isinstance(factor, bool) or not 0.0 < float(factor) <= 1.0:
        raise ValueError(f"downsample factor must be in (0, 1], got {factor!r}")
    image = prepare_image(image, row, NO_UPSCALE)
    if factor == 1.0:
        return image
    return image.resize(downsampled_size(image.size, factor), DOWNSAMPLE_FILTER)


def image_tokens(family: Any, processor: Any, image: Image.Image | tuple[int, int]) -> int:
    """Visual tokens one image (or a `(width, height)` size) costs on `family` with `processor`.

    A `BudgetProcessor` with a budget set emits exactly that many placeholders per image, whatever the size.
    """
    budget = getattr(processor, "budget", None)
    if budget is not None:
        return budget_tokens(budget)
    width, height = image.size if isinstance(image, Image.Image) else image
    return int(family.visual_tokens(processor, height, width))


def downsampled_size(size: tuple[int, int], factor: float = 0.5) -> tuple[int, int]:
    """The (width, height) `downsample` produces for an image of `size`."""
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


def check_downsample_saves(family: Any, processor: Any, sizes: Iterable[tuple[int, int]], factor: float = 0.5,
                           where: str = "images", counter: TokenCounter | None = None) -> int:
    """How many of the (full) image `sizes` gain nothing from downsampling (low tokens >= full tokens); warns with
    `PixelCapWarning` when any does. A processor with a fixed token budget is not checked (size does not matter)."""
    if getattr(processor, "budget", None) is not None or factor >= 1.0:
        return 0
    count = counter or TokenCounter(family, processor)
    bad: list[tuple[tuple[int, int], int]] = []
    total = 0
    for size in sizes:
        total += 1
        full = count(tuple(size))
        if count(downsampled_size(tuple(size), factor)) >= full:
            bad.append((tuple(size), full))
    if bad:
        (w, h), tokens = bad[0]
        warnings.warn(
            f"{where}: {len(bad)} of {total} image(s) (e.g. {w}x{h}) exceed the processor's pixel cap so far that the "
            f"{factor:g}x view costs as many visual tokens ({tokens}) as the full image: the resolution policy saves "
            "nothing on them. Downscale the full images to the processor's max_pixels first.",
            PixelCapWarning, stacklevel=2)
    return len(bad)


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
