"""Shared drawing kit for the synthetic data sets: palette, shape geometry, placement, seeding.

What: the vocabulary (colours, shapes), how each shape is rasterised with PIL, how shapes are placed without overlap,
and how every image gets its own random stream. GlyphQA (`glyphqa.py`) and the companion sets (`companions.py`) are
all built from these pieces, so a "red triangle" looks the same in each of them.

Why: a single geometry source keeps masks exact (a mask is the same polygon drawn into an "L" image) and lets the
validation code reason about sizes (area, bounding radius, inradius) without rasterising.

How: every shape is described by a centre (x, y) and a nominal radius `r` in pixels; `shape_polygon` returns the
points PIL draws (circles are drawn as ellipses). `rng_for(tag, seed, split, index)` gives a reproducible
`numpy.random.Generator` per image, so image i of a split never depends on how many images are generated.

    from adaptune.data.shapes import Shape, draw_shapes
    img = draw_shapes([Shape("triangle", "red", 40, 40, 12)], size=64, background=(250, 250, 250))
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Saturated, well separated hues; the half-resolution (BOX) average of a flat region keeps these exact.
PALETTE: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
COLORS: tuple[str, ...] = tuple(PALETTE)

# Per shape, in units of the nominal radius r: area, bounding radius (farthest point from the centre) and inradius
# (largest circle around the centre that stays inside). The star is available but not in the GlyphQA defaults.
SHAPE_GEOMETRY: dict[str, dict[str, float]] = {
    "circle": {"area": math.pi, "bound": 1.0, "inradius": 1.0},
    "square": {"area": 4 * 0.85**2, "bound": 0.85 * math.sqrt(2), "inradius": 0.85},
    "triangle": {"area": 3 * math.sqrt(3) / 4 * 1.25**2, "bound": 1.25, "inradius": 1.25 / 2},
    "diamond": {"area": 2 * 1.15**2, "bound": 1.15, "inradius": 1.15 / math.sqrt(2)},
    "star": {"area": 5 * 1.25 * 0.5 * math.sin(math.radians(36)), "bound": 1.25, "inradius": 0.5},
}
SHAPES: tuple[str, ...] = tuple(SHAPE_GEOMETRY)
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

# Stable small integers for the standard split names; other names hash with crc32.
_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class Shape:
    """One filled shape: kind, palette colour name, integer centre and nominal radius (pixels)."""

    kind: str
    color: str
    x: int
    y: int
    r: float
    rgb: RGB | None = None  # the exact fill (palette colour plus jitter); None = the palette colour

    @property
    def fill(self) -> RGB:
        return self.rgb if self.rgb is not None else PALETTE[self.color]

    @property
    def bound(self) -> float:
        return SHAPE_GEOMETRY[self.kind]["bound"] * self.r

    @property
    def area(self) -> float:
        return SHAPE_GEOMETRY[self.kind]["area"] * self.r**2

    @property
    def inradius(self) -> float:
        return SHAPE_GEOMETRY[self.kind]["inradius"] * self.r


def rng_for(tag: str, seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """A random stream for one image: disjoint across data set `tag`, `seed`, `split`, `index` and `stream`."""
    split_code = _SPLIT_CODES.get(split, zlib.crc32(split.encode()) + 3)
    entropy = [zlib.crc32(tag.encode()), int(seed), split_code, int(index), int(stream)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def shape_polygon(shape: Shape) -> list[tuple[float, float]]:
    """Polygon vertices of a non-circle shape, centred on (x, y); triangles and stars point up."""
    x, y, r = shape.x, shape.y, shape.r
    if shape.kind == "square":
        h = 0.85 * r
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape.kind == "diamond":
        h = 1.15 * r
        return [(x, y - h), (x + h, y), (x, y + h), (x - h, y)]
    if shape.kind == "triangle":
        return _regular(x, y, [1.25 * r] * 3)
    if shape.kind == "star":
        return _regular(x, y, [1.25 * r, 0.5 * r] * 5)
    raise ValueError(f"no polygon for shape {shape.kind!r}; known: {', '.join(SHAPES)}")


def _regular(x: float, y: float, radii: Sequence[float]) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (x + rad * math.cos(-math.pi / 2 + 2 * math.pi * i / n), y + rad * math.sin(-math.pi / 2 + 2 * math.pi * i / n))
        for i, rad in enumerate(radii)
    ]


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, fill: RGB | int) -> None:
    """Rasterise one shape (no anti-aliasing, so masks and fills agree pixel for pixel)."""
    if shape.kind == "circle":
        draw.ellipse([shape.x - shape.r, shape.y - shape.r, shape.x + shape.r, shape.y + shape.r], fill=fill)
    else:
        draw.polygon(shape_polygon(shape), fill=fill)


def draw_shapes(shapes: Sequence[Shape], size: int, background: RGB) -> Image.Image:
    """A `size` x `size` RGB image with the shapes painted in order on a flat background."""
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    for shape in shapes:
        draw_shape(draw, shape, shape.fill)
    return img


def shape_mask(shape: Shape, size: int) -> Image.Image:
    """Binary "L" mask (0 / 255) of exactly the pixels `draw_shape` paints for this shape."""
    mask = Image.new("L", (size, size), 0)
    draw_shape(ImageDraw.Draw(mask), shape, 255)
    return mask


def light_background(rng: np.random.Generator, jitter: int) -> RGB:
    """A near-white background colour: each channel in [255 - jitter, 255]."""
    return tuple(int(v) for v in 255 - rng.integers(0, jitter + 1, size=3))  # type: ignore[return-value]


def jitter_rgb(rgb: RGB, rng: np.random.Generator, amount: int) -> RGB:
    """The palette colour moved by up to `amount` per channel (keeps names unambiguous for amount <= ~20)."""
    if amount <= 0:
        return rgb
    offsets = rng.integers(-amount, amount + 1, size=3)
    return tuple(min(255, max(0, c + int(o))) for c, o in zip(rgb, offsets))  # type: ignore[return-value]


def nearest_color(rgb: Sequence[float]) -> str:
    """Name of the palette colour closest (Euclidean RGB) to `rgb`."""
    values = [int(v) for v in rgb]  # uint8 inputs would wrap around when subtracted
    return min(PALETTE, key=lambda name: sum((a - b) ** 2 for a, b in zip(PALETTE[name], values)))


def place_shapes(
    rng: np.random.Generator,
    specs: Sequence[tuple[str, str, float]],
    size: int,
    fixed: Sequence[Shape] = (),
    gap: float = 3.0,
    margin: float = 1.0,
    attempts: int = 60,
    region: tuple[float, float, float, float] | None = None,
) -> list[Shape]:
    """Place (kind, color, r) specs at random non-overlapping centres; a spec that finds no room is dropped.

    Two shapes are kept apart by their bounding circles plus `gap` pixels, so they never touch and each mask is
    exactly one connected, unoccluded shape. `fixed` shapes are already placed and are avoided. `region`
    (x0, y0, x1, y1) keeps the centres inside [x0, x1) x [y0, y1) (the whole shape still stays on the canvas).
    """
    placed = list(fixed)
    out: list[Shape] = []
    for kind, color, r in specs:
        bound = SHAPE_GEOMETRY[kind]["bound"] * r
        lo, hi = bound + margin, size - 1 - bound - margin
        x0, y0, x1, y1 = region if region is not None else (lo, lo, hi + 1, hi + 1)
        xlo, xhi, ylo, yhi = max(lo, x0), min(hi, x1 - 1), max(lo, y0), min(hi, y1 - 1)
        if xlo > xhi or ylo > yhi:
            continue
        xs = rng.uniform(xlo, xhi, size=attempts)
        ys = rng.uniform(ylo, yhi, size=attempts)
        for x, y in zip(np.rint(xs).astype(int), np.rint(ys).astype(int)):
            if all(math.hypot(x - s.x, y - s.y) >= bound + s.bound + gap for s in placed):
                shape = Shape(kind, color, int(x), int(y), float(r))
                placed.append(shape)
                out.append(shape)
                break
    return out
