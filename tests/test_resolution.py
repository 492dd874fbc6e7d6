"""The downsampler and the visual-token accounting (`adaptune.budget.resolution`): the factor's range, the area
filter, rounding, the fixed-budget shortcut, the per-size cache and the pixel-cap warning's rule and message.
Written against `make mutate MODULES=resolution` (issue 19). The family here is a stand-in whose token count is a
known function of (height, width), so each assert pins one rule; tests/test_env.py covers the real processors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from adaptune.budget import resolution
from adaptune.budget.resolution import (
    PixelCapWarning,
    TokenCounter,
    check_downsample_saves,
    downsample,
    downsampled_size,
    image_tokens,
)
from adaptune.data.validate import InputError


class Family:
    """Tokens = one per 8x8 patch of the image after a pixel cap (area `cap`), like a Qwen-VL processor."""

    def __init__(self, cap: int = 10**9) -> None:
        self.cap, self.calls = cap, []

    def visual_tokens(self, processor, height, width):
        assert processor is not None, "the processor is passed on"
        self.calls.append((height, width))
        area = min(height * width, self.cap)
        return max(1, area // 64)


class Processor:
    budget = None


class BudgetProcessor:
    def __init__(self, budget):
        self.budget = budget


@pytest.mark.parametrize("factor", [0, 0.0, -0.5, 1.0001, 2, True])
def test_downsample_refuses_factors_outside_zero_one(factor):
    with pytest.raises(ValueError, match="downsample factor must be in \\(0, 1\\]"):
        downsample(Image.new("RGB", (8, 8)), factor)


def test_downsample_is_an_exact_block_mean_and_rounds_sizes():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    low = downsample(Image.fromarray(pixels))  # default factor 0.5
    blocks = pixels.astype(float).reshape(3, 2, 4, 2, 3).mean(axis=(1, 3))
    assert low.size == (4, 3) and low.mode == "RGB"
    assert np.abs(np.asarray(low, dtype=float) - blocks).max() <= 1.0  # BOX: the mean (PIL rounds in fixed point)
    assert downsample(Image.new("RGB", (9, 5)), 0.5).size == (4, 2)   # round(4.5) = 4, round(2.5) = 2
    assert downsample(Image.new("RGB", (7, 3)), 0.5).size == (4, 2)   # round(3.5) = 4, round(1.5) = 2
    assert downsample(Image.new("RGB", (3, 1)), 0.25).size == (1, 1)  # never below 1 px
    assert downsample(Image.new("RGB", (40, 20)), 0.3).size == (12, 6)
    same = downsample(Image.new("L", (5, 3), 7), 1.0)
    assert same.size == (5, 3) and same.mode == "RGB"
    with pytest.raises(InputError, match="row r7"):
        downsample(b"not an image", 0.5, row="r7")


def test_downsampled_size():
    assert downsampled_size((9, 5)) == (4, 2)
    assert downsampled_size((1, 1)) == (1, 1)
    assert downsampled_size((10, 1), 0.1) == (1, 1)
    assert downsampled_size((100, 30), 0.25) == (25, 8)


def test_image_tokens_asks_the_family_height_first_or_uses_the_budget():
    family = Family()
    assert image_tokens(family, Processor(), (64, 16)) == 16 and family.calls == [(16, 64)]
    assert image_tokens(family, Processor(), Image.new("RGB", (32, 8))) == 4 and family.calls[-1] == (8, 32)
    assert image_tokens(family, BudgetProcessor(9), (640, 480)) == 9
    assert image_tokens(family, BudgetProcessor((3, 5)), (640, 480)) == 15
    assert len(family.calls) == 2
    assert image_tokens(family, object(), (8, 8)) == 1  # a processor without a budget attribute


def test_token_counter_caches_per_size():
    family = Family()
    count = TokenCounter(family, Processor())
    assert count((64, 16)) == 16
    assert count(Image.new("RGB", (64, 16))) == 16
    assert count([64, 16]) == 16
    assert count((16, 64)) == 16
    assert family.calls == [(16, 64), (64, 16)]


def test_check_downsample_saves_counts_and_warns_with_the_first_bad_size():
    family = Family(cap=128 * 128)  # from 256x256 on the half view is capped like the full one
    sizes = [(64, 64), (256, 256), (128, 128), (512, 128)]
    with pytest.warns(PixelCapWarning) as caught:
        bad = check_downsample_saves(family, Processor(), iter(sizes), where="split rl")
    assert bad == 2  # 128x128 -> 64x64: 64 vs 256 tokens, saves; 256x256 and 512x128: capped both ways
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("split rl: 2 of 4 image(s) (e.g. 256x256) exceed")
    assert "the 0.5x view costs as many visual tokens (256) as the full image" in message
    assert message.endswith("the resolution policy saves nothing on them. Downscale the full images to the "
                            "processor's max_pixels first.")
    assert caught[0].filename != resolution.__file__  # stacklevel=2: reported at the caller, not in the module


def test_check_downsample_saves_equal_tokens_count_and_quiet_cases():
    family = Family()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_downsample_saves(family, Processor(), [(64, 64), (16, 16)]) == 0
        assert check_downsample_saves(family, Processor(), [(4, 4)], factor=1.0) == 0   # no downsampling at all
        assert check_downsample_saves(family, BudgetProcessor(16), [(4, 4)]) == 0      # fixed budget
    assert family.calls == [(64, 64), (32, 32), (16, 16), (8, 8)]
    with pytest.warns(PixelCapWarning, match=r"1 of 1 image\(s\) \(e.g. 8x8\).*the 0.25x view.*\(1\)"):
        assert check_downsample_saves(family, Processor(), [(8, 8)], factor=0.25) == 1  # 1 token both: equal is bad


def test_check_downsample_saves_uses_its_factor_and_names_images_by_default():
    family = Family(cap=32 * 32)  # 64x64 costs 16 tokens, so does its 32x32 half; its 16x16 quarter costs 4
    assert check_downsample_saves(family, Processor(), [(64, 64)], factor=0.25) == 0
    with pytest.warns(PixelCapWarning, match=r"^images: 1 of 1 image\(s\) \(e.g. 64x64\)"):
        assert check_downsample_saves(family, Processor(), [(64, 64)]) == 1


def test_check_downsample_saves_uses_the_given_counter():
    family = Family()
    counter = TokenCounter(family, Processor())
    counter((64, 64))
    assert check_downsample_saves(Family(cap=1), Processor(), [(64, 64)], counter=counter) == 0
    assert family.calls == [(64, 64), (32, 32)]
