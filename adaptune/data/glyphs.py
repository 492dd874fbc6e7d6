"""Printed digits for GlyphQA.

What: loads a TrueType font that ships inside matplotlib (never a system font, so every machine renders the same
pixels), renders tight digit masks of a requested ink height, and stamps a digit centred on a pixel. (Half resolution
is `adaptune.budget.downsample`, the one downsampler shared by data, training, RL and evaluation.)

Why: the fine GlyphQA question is only fair if the digit is exactly `digit_px` pixels tall and centred on a vision
patch centre; measuring the ink (not the font's nominal size) makes that true for any font.

How:
    from adaptune.data.glyphs import digit_mask, stamp_digit
    mask = digit_mask(7, digit_px=7)          # PIL "L", ink height 7 px
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

DEFAULT_FONT = "DejaVuSans-Bold.ttf"


def font_dir() -> Path:
    """The folder of TTF fonts shipped with matplotlib (DejaVu family)."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def available_fonts() -> list[str]:
    """File names usable as `font=` without a path."""
    return sorted(p.name for p in font_dir().glob("*.ttf"))


@functools.lru_cache(maxsize=16)
def resolve_font(font: str) -> Path:
    """Map a font name (a file in matplotlib's font folder) or an explicit .ttf path to a file; ValueError otherwise."""
    candidate = Path(font)
    if candidate.suffix.lower() == ".ttf" and candidate.is_absolute() and candidate.is_file():
        return candidate
    shipped = font_dir() / font
    if shipped.is_file():
        return shipped
    raise ValueError(
        f"font {font!r} is neither a file in matplotlib's font folder nor an absolute path to a .ttf file; "
        f"shipped fonts: {', '.join(available_fonts())}"
    )


@functools.lru_cache(maxsize=64)
def _render(text: str, font_path: str, font_size: int) -> Image.Image:
    font = ImageFont.truetype(font_path, font_size)
    canvas = Image.new("L", (4 * font_size + 8, 4 * font_size + 8), 0)
    ImageDraw.Draw(canvas).text((4, 4), text, fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"font {os.path.basename(font_path)!r} renders no ink for {text!r}")
    return canvas.crop(box)


@functools.lru_cache(maxsize=64)
def font_size_for(digit_px: int, font: str = DEFAULT_FONT) -> int:
    """Largest font size whose tallest digit has at most `digit_px` rows of ink."""
    if digit_px < 3:
        raise ValueError(f"digit_px={digit_px} is too small to print a legible digit (need >= 3)")
    path = str(resolve_font(font))
    best = 0
    for size in range(2, 4 * digit_px + 8):
        if max(_render(str(d), path, size).height for d in range(10)) <= digit_px:
            best = size
    if best == 0:
        raise ValueError(f"font {font!r} cannot print digits {digit_px} px tall")
    return best


def digit_mask(digit: int, digit_px: int, font: str = DEFAULT_FONT) -> Image.Image:
    """Tight "L" mask (anti-aliased ink, 0-255) of one digit whose ink is at most `digit_px` tall."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    return _render(str(int(digit)), str(resolve_font(font)), font_size_for(digit_px, font))


@functools.lru_cache(maxsize=64)
def digit_extent(digit_px: int, font: str = DEFAULT_FONT) -> tuple[int, int]:
    """(max width, max height) of the ten digit masks, in pixels."""
    masks = [digit_mask(d, digit_px, font) for d in range(10)]
    return max(m.width for m in masks), max(m.height for m in masks)


def digit_box(cx: int, cy: int, mask: Image.Image) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) exclusive box of a mask centred on pixel (cx, cy)."""
    left, top = cx - mask.width // 2, cy - mask.height // 2
    return left, top, left + mask.width, top + mask.height


def stamp_digit(
    img: Image.Image, digit: int, cx: int, cy: int, color: tuple[int, int, int], digit_px: int, font: str = DEFAULT_FONT
) -> tuple[int, int, int, int]:
    """Paint `digit` in `color` with its ink box centred on pixel (cx, cy); returns that box. Edits `img` in place."""
    mask = digit_mask(digit, digit_px, font)
    box = digit_box(cx, cy, mask)
    img.paste(color, box, mask)
    return box


def contrasting_ink(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light fills (yellow, orange), white on dark ones (red, green, blue, purple)."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)
