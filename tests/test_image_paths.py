"""Issue 14: every path that takes an image goes through `adaptune.data.validate.prepare_image`.

Injected faults, each through the downsampler, the two-turn inference loop, the GRPO environment, the GRPO data path
and the VQA task: a 16-bit image (a plain `.convert("RGB")` makes it almost white), a fully transparent image (plain
conversion keeps the hidden colour instead of white), an aspect ratio above 200, a decompression-bomb PNG and corrupt
files in a dataset folder (both must be an `InputError` naming the row), and an image above the processor's pixel
cap (the half view costs as much as the full one: a `PixelCapWarning`).
"""

from __future__ import annotations

import struct
import warnings
import zlib

import datasets
import numpy as np
import pytest
from PIL import Image

from adaptune.budget import two_turn
from adaptune.budget.resolution import PixelCapWarning, check_downsample_saves, downsample
from adaptune.data.validate import InputError, InputPolicy, prepare_image
from adaptune.models import build_tiny, get_family
from adaptune.rl.data import to_grpo_rows
from adaptune.rl.env import EnvStats, ResolutionEnv
from adaptune.tasks.vqa import resize_for

SPEC = get_family("qwen3_vl")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("qwen3_vl")


def sixteen_bit(size: int = 64) -> Image.Image:
    """A 12-bit gradient stored as 16-bit (what scanners and microscopes write): plain RGB conversion clips it."""
    return Image.fromarray((np.arange(size * size).reshape(size, size) % 4096).astype(np.uint16))


def transparent(size: int = 64) -> Image.Image:
    return Image.new("RGBA", (size, size), (255, 0, 0, 0))  # red, but fully transparent: must come out white


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming width x height 1-bit pixels with a tiny payload (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    payload = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + payload + chunk(b"IEND", b"")


def assert_rescaled(image: Image.Image) -> None:
    arr = np.asarray(image)
    assert image.mode == "RGB" and arr.min() <= 12 and arr.max() >= 243  # the full range (block means at the edges)
    assert 90 < arr.mean() < 165, arr.mean()  # not "almost white" (plain convert: mean ~247)


def assert_white(image: Image.Image) -> None:
    assert image.mode == "RGB" and np.asarray(image).min() == 255


# ------------------------------------------------------------------------------------------------ the validator
def test_decompression_bomb_is_refused_with_the_row():
    with pytest.raises(InputError, match=r"row 12: decompression bomb refused \(Image size \(10000000000 pixels\)"):
        prepare_image(bomb_png(), row=12)
    with pytest.raises(InputError, match="row 4: image 12000x9000 has 108,000,000 pixels, above the limit of 89,"):
        prepare_image(bomb_png(12000, 9000), row=4)  # between PIL's warning and error: PIL alone would decode it
    with pytest.raises(InputError, match="row 3: .*above the limit of 1,000"):  # our own, configurable limit
        prepare_image(Image.new("RGB", (64, 64)), row=3, policy=InputPolicy(max_pixels=1000))


# ------------------------------------------------------------------------------------------------ the downsampler
def test_downsampler_converts_through_the_validator():
    assert_rescaled(downsample(sixteen_bit(), 0.5))
    assert_white(downsample(transparent(), 0.5))
    assert downsample(Image.new("RGB", (9, 9)), 0.5).size == (4, 4)  # no small-image upscaling in the downsampler
    with pytest.raises(InputError, match="row 5: image 10000x10 has aspect ratio 1000"):
        downsample(Image.new("RGB", (10000, 10)), 0.5, row=5)
    with pytest.raises(InputError, match="row 6: decompression bomb"):
        downsample(bomb_png(), 0.5, row=6)


def test_vqa_task_full_and_half_go_through_the_validator():
    for resolution in ("full", "half"):
        assert_rescaled(resize_for(sixteen_bit(), resolution))
        assert_white(resize_for(transparent(), resolution))


# ------------------------------------------------------------------------------------------------ two-turn loop
def test_two_turn_loop_validates_images(tiny, monkeypatch):
    model, processor = tiny
    seen: list[list[Image.Image]] = []

    def fake(model, processor, texts, images, *args, **kwargs):
        seen.extend(images)
        return ["<think>ok</think><answer>1</answer>"] * len(texts)

    monkeypatch.setattr(two_turn, "generate_texts", fake)
    two_turn.answer_with_resolution_policy(model, processor, [sixteen_bit(128), transparent(128)], ["q", "q"])
    assert_rescaled(seen[0][0])
    assert_white(seen[1][0])
    with pytest.raises(InputError, match="row 1: image 10000x10 has aspect ratio"):
        two_turn.answer_with_resolution_policy(model, processor, [sixteen_bit(), Image.new("RGB", (10000, 10))],
                                               ["q", "q"])
    with pytest.raises(InputError, match="row 0: decompression bomb"):
        two_turn.answer_with_resolution_policy(model, processor, [bomb_png()], ["q"])
    with pytest.warns(PixelCapWarning, match="as many visual tokens"):  # 512x512: above the tiny processor's cap
        two_turn.answer_with_resolution_policy(model, processor, [Image.new("RGB", (512, 512))], ["q"])


# ------------------------------------------------------------------------------------------------ environment
def test_environment_validates_and_counts_pixel_cap(tiny):
    _, processor = tiny
    env = ResolutionEnv(processor, SPEC)
    env.reset(image=downsample(sixteen_bit(128)), full_image=sixteen_bit(128))
    blocks = env.resize_image("resize")
    assert_rescaled(blocks[0]["image"])
    env.reset(image=downsample(transparent(128)), full_image=transparent(128))
    assert_white(env.resize_image("resize")[0]["image"])
    with pytest.raises(InputError, match="row r9: decompression bomb"):
        env.reset(image=Image.new("RGB", (64, 64)), full_image=bomb_png(), id="r9")
    stats = EnvStats()
    capped = ResolutionEnv(processor, SPEC, stats=stats)
    with pytest.warns(PixelCapWarning, match="resizing saves nothing"):
        capped.reset(image=downsample(Image.new("RGB", (512, 512))), full_image=Image.new("RGB", (512, 512)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per factory, not once per rollout
        capped.reset(image=downsample(Image.new("RGB", (512, 512))), full_image=Image.new("RGB", (512, 512)))
    assert stats.no_savings == 2 and capped.full_tokens == capped.low_tokens == 64
    assert stats.snapshot()["env/no_savings_total"] == 2.0


def test_pixel_cap_check_warns_only_when_half_saves_nothing(tiny):
    _, processor = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_downsample_saves(SPEC, processor, [(128, 128), (256, 256)]) == 0
    with pytest.warns(PixelCapWarning, match=r"1 of 2 image\(s\) \(e.g. 1024x1024\)"):
        assert check_downsample_saves(SPEC, processor, [(128, 128), (1024, 1024)]) == 1


# ------------------------------------------------------------------------------------------------ GRPO data
def grpo_source(images: list, **extra) -> datasets.Dataset:
    n = len(images)
    return datasets.Dataset.from_dict({"image": images, "question": ["q"] * n, "answer": ["a"] * n, **extra},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "question": datasets.Value("string"),
                                                                  "answer": datasets.Value("string"),
                                                                  **{k: datasets.Value("string") for k in extra}}))


def test_grpo_data_converts_through_the_validator():
    rows = to_grpo_rows(grpo_source([sixteen_bit(128), transparent(128)]))
    assert_rescaled(rows[0]["full_image"]) and assert_rescaled(rows[0]["image"]) is None
    assert_white(rows[1]["full_image"])
    assert_white(rows[1]["image"])
    assert rows[0]["image"].size == (64, 64)


def test_grpo_data_refuses_bad_rows_by_id(tmp_path):
    good = Image.new("RGB", (64, 64))
    with pytest.raises(InputError, match="row 1: image 10000x10 has aspect ratio 1000"):
        to_grpo_rows(grpo_source([good, Image.new("RGB", (10000, 10))]))
    corrupt = {"bytes": b"\x89PNG\r\n\x1a\n this is not a PNG", "path": None}
    source = grpo_source([good, good, corrupt], id=["a", "b", "c"])
    source.save_to_disk(str(tmp_path / "folder"))
    with pytest.raises(InputError, match="row c: unreadable or corrupt image"):
        to_grpo_rows(datasets.load_from_disk(str(tmp_path / "folder")))
    with pytest.raises(InputError, match="row b: decompression bomb"):
        to_grpo_rows(grpo_source([good, {"bytes": bomb_png(), "path": None}], id=["a", "b"]))


def test_vqa_dataset_folder_with_a_corrupt_image_names_the_row(tmp_path):
    from adaptune.tasks.vqa import load_vqa_rows

    good = Image.new("RGB", (64, 64))
    corrupt = {"bytes": b"\x89PNG\r\n\x1a\n this is not a PNG", "path": None}
    grpo_source([good, corrupt, good], id=["a", "b", "c"]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(InputError, match="row b: unreadable or corrupt image"):
        load_vqa_rows(str(tmp_path / "bad"), "train", 10, 0)
    grpo_source([good, good]).save_to_disk(str(tmp_path / "good"))
    rows = load_vqa_rows(str(tmp_path / "good"), "train", 10, 0)
    assert len(rows) == 2 and isinstance(rows[0]["image"], Image.Image)  # still decoded for the task
