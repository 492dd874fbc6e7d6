"""Companion sets: referring-segmentation masks and prompts, few-shot classes and k-shot sampling, caption pairs.

Run: .venv/bin/python -m pytest tests/test_companions.py -q   (a few seconds on 2 CPU cores)
"""

from __future__ import annotations

from collections import Counter

import datasets
import numpy as np
import pytest

from adaptune.data import (
    DEFAULT_CLASSES,
    SHOTS,
    FewShotConfig,
    RefSegConfig,
    class_prompts,
    generate_caption_pairs,
    generate_fewshot,
    generate_refseg,
    sample_k_shot,
)
from adaptune.data.companions import build_refseg_split, refseg_scene
from adaptune.data.shapes import COLORS, DEFAULT_SHAPES, PALETTE, nearest_color


def refseg_config(**overrides) -> RefSegConfig:
    return RefSegConfig(**{"seed": 1, "num_train": 30, "num_validation": 4, "num_test": 4, **overrides})


def fewshot_config(**overrides) -> FewShotConfig:
    return FewShotConfig(**{"seed": 1, "pool_per_class": 16, "validation_per_class": 2, "test_per_class": 3,
                            **overrides})


@pytest.fixture(scope="module")
def refseg() -> datasets.DatasetDict:
    return generate_refseg(refseg_config())


@pytest.fixture(scope="module")
def fewshot() -> datasets.DatasetDict:
    return generate_fewshot(fewshot_config())


def test_refseg_is_deterministic(refseg):
    again = generate_refseg(refseg_config())
    for split in refseg:
        assert [im.tobytes() for im in again[split]["image"]] == [im.tobytes() for im in refseg[split]["image"]]
        assert [m.tobytes() for m in again[split]["mask"]] == [m.tobytes() for m in refseg[split]["mask"]]
    other = build_refseg_split(refseg_config(seed=2), "train")
    assert {im.tobytes() for im in other["image"]}.isdisjoint(im.tobytes() for im in refseg["train"]["image"])


def test_masks_cover_exactly_one_shape_of_the_prompted_colour(refseg):
    for row in refseg["train"]:
        image, mask = np.asarray(row["image"]), np.asarray(row["mask"])
        assert row["mask"].mode == "L" and set(np.unique(mask)) == {0, 255}
        assert image.shape[:2] == mask.shape == (96, 96)
        inside = image[mask > 0]
        assert len(np.unique(inside, axis=0)) == 1  # one flat fill: the mask covers one unoccluded shape
        assert nearest_color(inside[0]) == row["color"]
        assert row["prompt"] == f"the {row['color']} {row['shape']}"
        x0, y0, x1, y1 = row["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_prompts_are_unambiguous_and_need_both_words():
    cfg = refseg_config(targets_per_image=3)
    needs_both = 0
    for index in range(40):
        _, shapes, targets = refseg_scene(cfg, "train", index)
        pairs = [(s.kind, s.color) for s in shapes]
        assert targets and len({(t.kind, t.color) for t in targets}) == len(targets) <= 3
        for t in targets:
            assert pairs.count((t.kind, t.color)) == 1
        target = targets[0]
        needs_both += any(s.color == target.color or s.kind == target.kind for s in shapes if s is not target)
    assert needs_both >= 25  # most images hold a distractor sharing the target's colour or shape


def test_refseg_rows_per_image():
    rows = build_refseg_split(refseg_config(targets_per_image=2), "train", num_images=10)
    per_image = Counter(row_id.rsplit("-t", 1)[0] for row_id in rows["id"])
    assert len(per_image) == 10 and set(per_image.values()) <= {1, 2}
    assert len(set(rows["id"])) == len(rows)


def test_fewshot_splits_have_exact_class_counts(fewshot):
    cfg = fewshot_config()
    for split, per_class in (("train", 16), ("validation", 2), ("test", 3)):
        assert Counter(fewshot[split]["class_name"]) == {name: per_class for name in cfg.classes}
    assert fewshot["train"].features["label"].names == list(DEFAULT_CLASSES)
    assert class_prompts(cfg)[0] == "a photo of a red circle."
    assert set(Counter(c.split()[0] for c in DEFAULT_CLASSES).values()) == {2}  # every colour twice
    assert set(Counter(c.split()[1] for c in DEFAULT_CLASSES).values()) == {3}  # every shape three times


def test_fewshot_main_colour_dominates(fewshot):
    for row in fewshot["test"]:
        pixels = np.asarray(row["image"], dtype=int).reshape(-1, 3)
        saturated = pixels[pixels.max(axis=1) - pixels.min(axis=1) > 90]
        names = Counter(nearest_color(p) for p in saturated[::3])
        assert names.most_common(1)[0][0] == row["class_name"].split()[0]


@pytest.mark.parametrize("shots", SHOTS)
def test_k_shot_exact_counts_and_nesting(fewshot, shots):
    subset = sample_k_shot(fewshot["train"], shots, seed=7)
    assert Counter(subset["label"]) == {label: shots for label in range(len(DEFAULT_CLASSES))}
    assert sample_k_shot(fewshot["train"], shots, seed=7)["id"] == subset["id"]
    if shots < 16:
        assert set(subset["id"]) <= set(sample_k_shot(fewshot["train"], shots * 2, seed=7)["id"])
        assert set(subset["id"]) != set(sample_k_shot(fewshot["train"], shots, seed=8)["id"])


def test_k_shot_errors(fewshot):
    with pytest.raises(ValueError, match="class 'red circle' has only 16 examples, cannot draw 17 shots"):
        sample_k_shot(fewshot["train"], 17)
    with pytest.raises(ValueError, match="shots must be >= 1"):
        sample_k_shot(fewshot["train"], 0)


def test_caption_pairs_name_the_main_object():
    pairs = generate_caption_pairs(fewshot_config(), num_pairs=40, num_validation=5)
    assert {k: len(v) for k, v in pairs.items()} == {"train": 40, "validation": 5}
    for row in pairs["train"]:
        words = row["caption"].replace(",", "").split()
        assert words[0] == "a" and words[1] in COLORS and words[2] in DEFAULT_SHAPES
        assert row["image"].size == (64, 64)
    assert pairs["train"]["caption"] == generate_caption_pairs(fewshot_config(), 40, 5)["train"]["caption"]


@pytest.mark.parametrize(
    ("factory", "overrides", "message"),
    [
        (RefSegConfig, {"num_train": 0}, "num_train=0: need at least one sample"),
        (RefSegConfig, {"radius_frac": (0.1, 0.45)}, "fits the canvas"),
        (RefSegConfig, {"min_shapes": 0}, "need 1 <= min_shapes"),
        (RefSegConfig, {"shapes": ("hexagon",)}, "need distinct names"),
        (FewShotConfig, {"classes": ("red circle", "pink blob")}, "must be 'colour shape'"),
        (FewShotConfig, {"classes": ("red circle",)}, "at least two distinct class names"),
        (FewShotConfig, {"pool_per_class": 0}, "need at least one sample"),
        (FewShotConfig, {"prompt_template": "a photo"}, "placeholder"),
    ],
)
def test_impossible_companion_configs_raise_clear_errors(factory, overrides, message):
    with pytest.raises(ValueError, match=message):
        factory(**overrides)


def test_sizes_are_parameters():
    seg = build_refseg_split(refseg_config(image_size=64), "train", num_images=3)
    assert seg[0]["image"].size == (64, 64) and seg[0]["mask"].size == (64, 64)
    fs = generate_fewshot(fewshot_config(image_size=96, pool_per_class=1, validation_per_class=0, test_per_class=0))
    assert list(fs) == ["train"] and fs["train"][0]["image"].size == (96, 96)
    assert PALETTE["red"] == (220, 40, 40)
