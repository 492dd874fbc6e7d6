"""Calibration views of GlyphQA's fine question: the same digit window at full and at half resolution.

What: `digit_crops` renders one scene ten times, once per digit, and cuts the window around the digit at full and at
half resolution; `digit_separability` measures how far apart the ten crops are (pixel RMS); `calibration` draws them
as a PNG figure (matplotlib Agg, no display needed) for reports.

Why: the fine questions are only meaningful if the digit is readable at full resolution and not at half. These
functions make that claim checkable from pixels (tests/test_glyphqa.py) and visible in a report.

How:
    from adaptune.eval.calibration import calibration, digit_crops, digit_separability
    png = calibration(path="glyphqa_calibration.png")            # 7 px vs 9 px digits, full vs half
    full, half = digit_crops(GlyphQAConfig(digit_px=7))
    digit_separability(full), digit_separability(half)          # min pairwise RMS between digits
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from adaptune.data.glyphqa import GlyphQAConfig, render_scene, sample_scene
from adaptune.budget.resolution import downsample
from adaptune.data.shapes import rng_for


def digit_crops(
    cfg: GlyphQAConfig | None = None, index: int = 0, window: int | None = None, factor: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """(full, half) uint8 arrays of shape (10, w, w, 3) and (10, w/factor, w/factor, 3): digits 0..9 in one scene.

    The window (default: one patch) is centred on the digit's patch centre; the half crop covers the same area.
    """
    cfg = cfg or GlyphQAConfig(num_images=1, num_validation=0, num_test=0)
    window = window or cfg.patch_size
    if window % (2 * factor):
        raise ValueError(f"window={window} must be a multiple of 2 * factor={2 * factor}")
    scene = sample_scene(cfg, rng_for("glyphqa-calibration", cfg.seed, "calibration", index))
    cx, cy = scene.digit_center
    left, top = cx - window // 2, cy - window // 2
    full, half = [], []
    for digit in range(10):
        img = render_scene(replace(scene, digit=digit), cfg)
        full.append(np.asarray(img.crop((left, top, left + window, top + window))))
        small = downsample(img, 1 / factor)
        box = (left // factor, top // factor, (left + window) // factor, (top + window) // factor)
        half.append(np.asarray(small.crop(box)))
    return np.stack(full), np.stack(half)


def digit_separability(crops: np.ndarray) -> float:
    """Smallest pixel-RMS distance between any two of the digit crops (0 = two digits look identical)."""
    flat = crops.reshape(len(crops), -1).astype(np.float64)
    dists = [np.sqrt(np.mean((flat[i] - flat[j]) ** 2)) for i in range(len(flat)) for j in range(i + 1, len(flat))]
    return float(min(dists))


def calibration(
    cfg: GlyphQAConfig | None = None,
    digit_sizes: Sequence[int] = (7, 9),
    index: int = 0,
    path: str | Path | None = None,
) -> bytes:
    """A PNG figure: per digit size, the ten digit windows at full resolution and at half (shown enlarged).

    Each row is titled with its separability (min pairwise RMS); returns the PNG bytes and writes them to `path`.
    """
    base = cfg or GlyphQAConfig(num_images=1, num_validation=0, num_test=0)
    fig = Figure(figsize=(10, 1.3 * 2 * len(digit_sizes)), dpi=100)
    axes = fig.subplots(2 * len(digit_sizes), 10, squeeze=False)
    for row, size in enumerate(digit_sizes):
        full, half = digit_crops(replace(base, digit_px=size), index=index)
        for offset, (label, crops) in enumerate((("full", full), ("half", half))):
            line = axes[2 * row + offset]
            for digit, ax in enumerate(line):
                ax.imshow(crops[digit], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            line[0].set_ylabel(f"{size}px {label}", fontsize=8)
            line[0].set_title(f"min RMS between digits {digit_separability(crops):.1f}", fontsize=8, loc="left")
    fig.suptitle("GlyphQA digit windows: full vs half resolution (BOX)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    png = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(png)
    return png
