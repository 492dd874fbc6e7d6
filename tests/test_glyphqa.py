"""GlyphQA generator: determinism, labels, digit placement, half-resolution blur, config errors, build script.

Run: .venv/bin/python -m pytest tests/test_glyphqa.py -q   (a few seconds on 2 CPU cores)
"""

from __future__ import annotations

import math
import re
import runpy
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from adaptune.data import (
    BINDING_QTYPES,
    COARSE_QTYPES,
    DEFAULT_COARSE_QTYPES,
    GlyphQAConfig,
    build_split,
    explode_questions,
    generate_glyphqa,
    heldout_mix,
)
from adaptune.budget import downsample
from adaptune.eval.calibration import calibration, digit_crops, digit_separability
from adaptune.data.glyphqa import POSITION_WORDS, GlyphScene, render_scene, sample_scene, scene_questions
from adaptune.data.glyphs import digit_box, digit_extent, digit_mask
from adaptune.data.shapes import COLORS, SHAPES, Shape, draw_shapes, rng_for, shape_mask

REPO = Path(__file__).resolve().parent.parent


def small_config(**overrides) -> GlyphQAConfig:
    return GlyphQAConfig(**{"seed": 3, "num_images": 40, "num_validation": 8, "num_test": 8, **overrides})


@pytest.fixture(scope="module")
def train() -> datasets.Dataset:
    return build_split(small_config(), "train")


@pytest.fixture(scope="module")
def train_all() -> datasets.Dataset:
    """Every coarse question type, the opt-in binding questions included."""
    return build_split(small_config(coarse_qtypes=COARSE_QTYPES), "train")


def _pixels(ds: datasets.Dataset) -> list[bytes]:
    return [img.tobytes() for img in ds["image"]]


def test_same_seed_gives_identical_bytes_and_rows(train):
    again = build_split(small_config(), "train")
    assert _pixels(again) == _pixels(train)
    raw = datasets.Image(decode=False)
    assert again.cast_column("image", raw)["image"] == train.cast_column("image", raw)["image"]  # same PNG bytes
    assert again.remove_columns("image").to_list() == train.remove_columns("image").to_list()


def test_different_seeds_and_splits_differ(train):
    other_seed = build_split(small_config(seed=4), "train")
    validation = build_split(small_config(), "validation")
    assert not set(_pixels(train)) & set(_pixels(other_seed))
    assert not set(_pixels(train)) & set(_pixels(validation))
    assert len(set(train["id"])) == len(train)


def test_generate_has_three_splits_and_omits_empty_ones():
    dsd = generate_glyphqa(small_config(num_images=5, num_validation=0, num_test=3))
    assert {k: len(v) for k, v in dsd.items()} == {"train": 5, "test": 3}
    image = dsd["train"][0]["image"]
    assert image.mode == "RGB" and image.size == (128, 128)


@pytest.mark.parametrize("name", ["train", "train_all"])
def test_answers_match_kinds_and_vocabulary(name, request):
    train = request.getfixturevalue(name)
    vocab = {
        "count_total": {str(n) for n in range(1, 6)},
        "count_color": {str(n) for n in range(0, 6)},
        "color_of_shape": set(COLORS),
        "shape_of_color": set(SHAPES),
        "relative_position": set(POSITION_WORDS),
        "color_of_biggest": set(COLORS),
        "shape_of_biggest": set(SHAPES),
        "position_of_biggest": {"left", "right", "top", "bottom"},
    }
    seen = set()
    for row in train:
        assert row["questions"][-1] == row["question"] or row["kind"] == "coarse"
        assert row["question"] in row["questions"]
        for answer, kind, qtype in zip(row["answers"], row["kinds"], row["qtypes"]):
            if kind == "fine":
                assert qtype == "digit" and answer in {str(d) for d in range(10)} and answer == str(row["digit"])
            else:
                assert kind == "coarse" and qtype in COARSE_QTYPES and answer in vocab[qtype], (qtype, answer)
            seen.add(qtype)
    assert seen >= set(DEFAULT_COARSE_QTYPES) | {"digit"}
    assert (seen & set(BINDING_QTYPES)) == (set() if len(seen) == 5 else set(BINDING_QTYPES))


@pytest.mark.parametrize("name", ["train", "train_all"])
def test_answers_agree_with_objects(name, request):
    train = request.getfixturevalue(name)
    for row in train:
        objects = row["objects"]
        colors = [o["color"] for o in objects]
        kinds = [o["shape"] for o in objects]
        by_name = {f"{o['color']} {o['shape']}": o for o in objects}
        for question, answer, qtype in zip(row["questions"], row["answers"], row["qtypes"]):
            words = question.rstrip("?").split()
            if qtype == "count_total":
                assert answer == str(len(objects))
            elif qtype == "color_of_biggest":
                assert answer == objects[0]["color"]
            elif qtype == "shape_of_biggest":
                assert answer == objects[0]["shape"]
            elif qtype == "position_of_biggest":
                x, y = objects[0]["x"], objects[0]["y"]
                assert answer == ({"left": "left" if x < 64 else "right", "top": "top" if y < 64 else "bottom"}
                                  [words[-5]]) and min(abs(x - 64), abs(y - 64)) >= 6
            elif qtype == "count_color":
                assert answer == str(colors.count(words[2]))
            elif qtype == "color_of_shape":
                assert kinds.count(words[-1]) == 1 and colors[kinds.index(words[-1])] == answer
            elif qtype == "shape_of_color":
                assert colors.count(words[-2]) == 1 and kinds[colors.index(words[-2])] == answer
            elif qtype == "relative_position":
                first, second = by_name[" ".join(words[2:4])], by_name[" ".join(words[-2:])]
                axis, sign = {"left": ("x", -1), "right": ("x", 1), "above": ("y", -1), "below": ("y", 1)}[answer]
                assert sign * (first[axis] - second[axis]) >= 10
        assert f"digit {row['digit']}" in row["caption"] and row["caption"].startswith(f"{len(objects)} shapes")


def test_fine_fraction_is_exact_in_mix():
    cfg = small_config(num_test=50)
    mix = heldout_mix(cfg, fine_fraction=0.3)
    assert mix["kind"].count("fine") == 15 and set(mix["qtype"]) > {"digit"}
    test = build_split(cfg, "test", fine_fraction=0.3)
    assert _pixels(mix) == _pixels(test)  # same held-out images, only the primary question changes


def test_explode_gives_one_row_per_question(train):
    flat = explode_questions(train.select(range(5)))
    assert len(flat) == sum(len(q) for q in train.select(range(5))["questions"])
    assert flat[0]["image"].tobytes() == train[0]["image"].tobytes()


@pytest.mark.parametrize("index", range(30))
def test_digit_is_centred_on_a_patch_centre_inside_the_biggest_shape(index):
    cfg = small_config(shapes=("circle", "square", "triangle", "diamond", "star"))
    scene = sample_scene(cfg, rng_for("glyphqa", cfg.seed, "train", index))
    cx, cy = scene.digit_center
    assert (cx - 8) % 16 == 0 and (cy - 8) % 16 == 0
    with_digit = np.asarray(render_scene(scene, cfg), dtype=int)
    without = np.asarray(draw_shapes(scene.shapes, cfg.image_size, scene.background), dtype=int)
    ys, xs = np.nonzero(np.abs(with_digit - without).sum(axis=2))
    assert abs((xs.min() + xs.max()) / 2 - cx) <= 0.5 and abs((ys.min() + ys.max()) / 2 - cy) <= 0.5
    assert ys.max() - ys.min() + 1 <= cfg.digit_px
    big = np.asarray(shape_mask(scene.shapes[0], cfg.image_size)) > 0
    assert big[ys.min() - 1: ys.max() + 2, xs.min() - 1: xs.max() + 2].all()  # ink plus a 1 px rim inside the shape
    assert scene.shapes[0].area > max(s.area for s in scene.shapes[1:]) if len(scene.shapes) > 1 else True


def test_digit_is_blurred_at_half_resolution():
    full7, half7 = digit_crops(small_config(digit_px=7))
    full9, half9 = digit_crops(small_config(digit_px=9))
    ratio7 = digit_separability(half7) / digit_separability(full7)
    ratio9 = digit_separability(half9) / digit_separability(full9)
    assert ratio7 < 0.6, ratio7  # the two closest digits lose most of their difference at half resolution
    assert ratio9 > ratio7 + 0.1, (ratio7, ratio9)  # the calibrated 9 px digit keeps much more of it


def test_half_resolution_is_a_box_mean():
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    half = np.asarray(downsample(Image.fromarray(pixels)), dtype=float)
    block_mean = pixels.reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    assert half.shape == (4, 4, 3) and np.abs(half - block_mean).max() <= 1.0
    assert downsample(Image.new("RGB", (9, 9))).size == (4, 4)  # rounded, as the RL environment always did
    for bad in (0, 1.5, -0.5, True):
        with pytest.raises(ValueError, match="factor"):
            downsample(Image.new("RGB", (8, 8)), bad)


def test_calibration_returns_png(tmp_path):
    png = calibration(small_config(), path=tmp_path / "cal.png")
    assert png.startswith(b"\x89PNG") and (tmp_path / "cal.png").read_bytes() == png


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_images": 0}, "num_images=0: need at least one sample"),
        ({"fine_fraction": -0.1}, "fine_fraction=-0.1: must be a fraction"),
        ({"num_test": -1}, "num_test=-1: must be >= 0"),
        ({"image_size": 100}, "multiple of patch_size=16"),
        ({"digit_px": 15}, "too large for one 16 px patch"),
        ({"digit_px": 2}, "too small to print"),
        ({"digit_px": 12, "big_radius": (12.0, 14.0), "small_radius": (4.0, 6.0)}, "too large to fit inside a"),
        ({"big_radius": (19.0, 60.0)}, "cannot sit on any patch centre"),
        ({"big_radius": (10.0, 12.0)}, "must out-area every small_radius"),
        ({"colors": ("red", "pink")}, "colors=('red', 'pink'): need distinct names"),
        ({"min_shapes": 4, "max_shapes": 3}, "min_shapes <= max_shapes"),
        ({"font": "Comic.ttf"}, "shipped fonts: DejaVuSans"),
        ({"coarse_qtypes": ("count_total", "colour")}, "need distinct names from count_total"),
        ({"layout": "grid"}, "layout='grid': must be 'free' or 'quadrants'"),
        ({"layout": "quadrants", "max_shapes": 5}, "at most 4 shapes (one per quadrant)"),
    ],
)
def test_impossible_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        small_config(**overrides)


@pytest.mark.parametrize("layout", ["free", "quadrants"])
def test_quadrant_layout_holds_one_shape_centre_per_quadrant(layout):
    cfg = small_config(layout=layout, max_shapes=4, num_images=60)
    ds = build_split(cfg, "train")
    sizes = [len(objs) for objs in ds["objects"]]
    assert min(sizes) >= cfg.min_shapes and max(sizes) == 4
    one_per_quadrant = [len({(o["x"] // 64, o["y"] // 64) for o in objs}) == len(objs) for objs in ds["objects"]]
    # quadrants: always; free: not always (two centres share a quadrant now and then)
    assert all(one_per_quadrant) == (layout == "quadrants")


def test_place_shapes_region_bounds_the_centres():
    from adaptune.data.shapes import place_shapes

    rng = np.random.default_rng(0)
    shapes = place_shapes(rng, [("circle", "red", 6.0)] * 3, 128, region=(64, 0, 128, 64), gap=1.0)
    assert shapes and all(64 <= s.x < 128 and 0 <= s.y < 64 for s in shapes)
    assert place_shapes(rng, [("circle", "red", 40.0)], 128, region=(0, 0, 30, 30)) == []  # no room: dropped


def test_split_size_errors_are_clear():
    with pytest.raises(ValueError, match="fine_fraction must be a fraction"):
        build_split(small_config(), "train", fine_fraction=1.5)
    with pytest.raises(ValueError, match="needs num_images >= 1"):
        build_split(small_config(), "holdout")


def test_digit_size_is_configurable():
    assert digit_extent(9)[1] == 9 and digit_extent(7)[1] == 7
    assert replace(small_config(), digit_px=9).digit_px == 9


def test_build_script_is_not_a_package_and_builds(tmp_path):
    """GlyphQA is written as a Hub-style dataset folder (parquet shards + a dataset card) that `load_dataset`,
    the card API and adaptune's resolver read back; the rows are the generator's, images included."""
    from huggingface_hub import DatasetCard

    from adaptune.data.sources import load_source

    assert not (REPO / "datasets" / "__init__.py").exists()
    script = runpy.run_path(str(REPO / "datasets" / "build_glyphqa.py"), run_name="build_glyphqa")
    args = ["--out", str(tmp_path), "--num-images", "7", "--num-validation", "2", "--num-test", "4", "--only",
            "glyphqa", "--rows-per-shard", "3"]
    script["main"](args)
    folder = tmp_path / "glyphqa"
    loaded = datasets.load_dataset(str(folder))
    assert {k: len(v) for k, v in loaded.items()} == {"train": 7, "validation": 2, "test": 4}
    assert len(list((folder / "data").glob("train-*-of-00003.parquet"))) == 3  # 7 rows, 3 per shard
    expected = build_split(GlyphQAConfig(seed=0, num_images=7, num_validation=2, num_test=4), "train")
    assert loaded["train"]["id"] == expected["id"] and loaded["train"]["answer"] == expected["answer"]
    assert loaded["train"].features == expected.features  # Image, lists and structs survive the round trip
    assert np.array_equal(np.asarray(loaded["train"][3]["image"]), np.asarray(expected[3]["image"]))
    mix = datasets.load_dataset(str(folder), "heldout_mix")
    assert list(mix) == ["test"] and len(mix["test"]) == 4
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and "visual-question-answering" in card.data.task_categories
    assert [c["config_name"] for c in card.data.configs] == ["default", "heldout_mix"]
    info = {i["config_name"]: i for i in card.data.dataset_info}
    assert {s["name"]: s["num_examples"] for s in info["default"]["splits"]} == {"train": 7, "validation": 2,
                                                                                 "test": 4}
    assert "--num-images 7" in card.text and "load_dataset" in card.text
    rows = load_source(str(folder), "validation", key="task.params.dataset")  # a recipe's `dataset: <folder>`
    assert rows["id"] == loaded["validation"]["id"]
    script["main"](args[:3] + ["3"] + args[4:])  # a smaller rebuild leaves no stale shard behind
    assert len(datasets.load_dataset(str(folder))["train"]) == 3
    assert (tmp_path / "glyphqa_calibration.png").exists()
    (folder / "dataset_dict.json").write_text("{}")  # a save_to_disk copy in the way is refused, not mixed in
    with pytest.raises(FileExistsError, match="save_to_disk"):
        script["main"](args)


# ------------------------------------------------------------------------------------------ bounds at their edges


def test_every_config_bound_accepts_its_edge():
    small_config(num_validation=0, num_test=0, center_jitter=0, position_margin=1, max_position_questions=0,
                 fine_fraction=0.0, color_jitter=0, background_jitter=0, min_shapes=1, max_shapes=1,
                 big_radius=(20.0, 20.0), small_radius=(8.0, 8.0), num_images=1)
    small_config(fine_fraction=1.0, large_digit_fraction=1.0, color_jitter=30, background_jitter=60, min_shapes=3,
                 max_shapes=3, layout="quadrants")
    small_config(layout="quadrants", max_shapes=4)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"num_validation": -1}, "num_validation=-1: must be >= 0"),
    ({"center_jitter": -1}, "center_jitter=-1: must be >= 0"),
    ({"position_margin": 0}, "position_margin=0: must be >= 1"),
    ({"max_position_questions": -1}, "max_position_questions=-1: must be >= 0"),
    ({"fine_fraction": 1.01}, "fine_fraction=1.01: must be a fraction in [0, 1]"),
    ({"large_digit_fraction": -0.01}, "large_digit_fraction=-0.01: must be a fraction in [0, 1]"),
    ({"large_digit_fraction": 1.01}, "large_digit_fraction=1.01: must be a fraction in [0, 1]"),
    ({"patch_size": 0}, "image_size=128: must be a positive multiple of patch_size=0"),
    ({"image_size": 8, "patch_size": 16}, "image_size=8: must be a positive multiple of patch_size=16"),
    ({"color_jitter": 31}, "color_jitter=31: must be in [0, 30]"),
    ({"color_jitter": -1}, "color_jitter=-1: must be in [0, 30]"),
    ({"background_jitter": 61}, "background_jitter=61: must be in [0, 60]"),
    ({"background_jitter": -1}, "background_jitter=-1: must be in [0, 60]"),
    ({"shapes": ("circle", "circle")}, "shapes=('circle', 'circle'): need distinct names from circle, square"),
    ({"shapes": ()}, "shapes=(): need distinct names"),
    ({"shapes": ("circle", "hexagon")}, "shapes=('circle', 'hexagon'): need distinct names"),
    ({"colors": ()}, "colors=(): need distinct names from red"),
    ({"coarse_qtypes": ()}, "coarse_qtypes=(): need distinct names"),
    ({"coarse_qtypes": ("count_total", "count_total")}, "coarse_qtypes=('count_total', 'count_total'): need"),
    ({"min_shapes": 0}, "min_shapes=0: need 1 <= min_shapes <= max_shapes=5"),
    ({"big_radius": (0.0, 20.0)}, "big_radius=(0.0, 20.0): need 0 < low <= high"),
    ({"big_radius": (21.0, 20.0)}, "big_radius=(21.0, 20.0): need 0 < low <= high"),
    ({"small_radius": (9.0, 8.0)}, "small_radius=(9.0, 8.0): need 0 < low <= high"),
])
def test_each_bound_refuses_just_past_its_edge(overrides, message):
    with pytest.raises(ValueError, match="GlyphQAConfig." + re.escape(message)):
        small_config(**overrides)


def test_patch_centres_keep_the_whole_jittered_shape_on_the_canvas_edges_included():
    from adaptune.data.glyphqa import _patch_centres

    circles = small_config(shapes=("circle",), center_jitter=0)  # bound = radius + 1 px
    assert _patch_centres(circles, 23.0) == [24, 40, 56, 72, 88]  # 24 - 24 = 0 is on the canvas; 104 + 24 = 128 not
    assert _patch_centres(circles, 22.0) == [24, 40, 56, 72, 88, 104]  # 104 + 23 = 127, the last pixel
    assert _patch_centres(circles, 15.0, 32) == [16, 48, 80]  # half-resolution patch centres: 16 + 32k
    jittered = small_config(shapes=("circle",), center_jitter=2)
    assert _patch_centres(jittered, 21.0) == [24, 40, 56, 72, 88]  # the jitter widens the bound
    stars = small_config(shapes=("circle", "star"), center_jitter=0)  # the widest allowed shape counts
    assert _patch_centres(stars, 18.4) == [24, 40, 56, 72, 88]  # 1.25 * 18.4 + 1 = 24


# What the generator draws for a fixed seed, minus the pixels (which depend on Pillow's rasteriser): scenes,
# questions, answers, digit sizes and positions, captions. The embedded default, the shipped policy and every
# documented figure were made from these rows, so a change here silently changes all of them. If a change is
# intended, record the new fingerprints and say so in the changelog; the mutation run (tools/mutate.py glyphqa)
# relies on this test to catch sampling changes that keep every row valid.
FROZEN = {
    "default": ({}, "60d204962d896f76"),
    "two-sizes+jitter": ({"large_digit_fraction": 0.5, "color_jitter": 30, "background_jitter": 60},
                         "94811d6d6322aeed"),
    "quadrants+binding": ({"layout": "quadrants", "max_shapes": 4, "coarse_qtypes": (
        "count_total", "count_color", "color_of_shape", "shape_of_color", "relative_position")}, "65f285e271c6f45a"),
    "many+star": ({"shapes": ("circle", "square", "triangle", "star"), "min_shapes": 4, "max_shapes": 7,
                   "digit_px": 9}, "b7b0574094a7dd78"),
    # an odd canvas (13 patches of 9 px): the quadrants' shared edge falls inside a pixel column (integer halves);
    # changed on purpose when a big shape on the middle patch stopped being asked its side (it has none)
    "odd-canvas+quadrants": ({"image_size": 117, "patch_size": 9, "layout": "quadrants", "max_shapes": 4},
                             "6333d5c1a45b8ee9"),
}


@pytest.mark.parametrize("name", list(FROZEN))
def test_generated_rows_are_frozen_for_a_seed(name):
    import hashlib
    import json

    overrides, expected = FROZEN[name]
    rows = build_split(GlyphQAConfig(seed=3, **overrides), "test", num_images=16, fine_fraction=0.5)
    data = [{k: v for k, v in row.items() if k != "image"} for row in rows]
    text = json.dumps(data, sort_keys=True, default=str)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == expected, (
        f"GlyphQA rows for {name!r} changed (first row: {data[0]})")


# ------------------------------------------------------------------- survivors of the mutation run (issue 19)
# Each test below guards behaviour a user relies on; together they kill the mutants of adaptune/data/glyphqa.py
# that the earlier tests let through (the rest, with the reason each survives, are in tests/mutation/equivalent.md).

REGULAR_FONT = "DejaVuSans.ttf"  # narrower digits than the default DejaVuSans-Bold: a font that is not the default


def _one_shape(**overrides) -> GlyphQAConfig:
    """A config with only circles and one shape per image (no out-area rule), for exact geometric edges."""
    return small_config(**{"shapes": ("circle",), "min_shapes": 1, "max_shapes": 1, **overrides})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"coarse_qtypes": ("colour",)}, "coarse_qtypes=('colour',): need distinct names from "
                                     + ", ".join(COARSE_QTYPES)),
    ({"layout": "quadrants", "max_shapes": 5},
     "max_shapes=5: layout='quadrants' holds at most 4 shapes (one per quadrant)"),
    ({"max_shapes": 2, "big_radius": (10.0, 12.0)},
     "big_radius=(10.0, 12.0): the big shape must out-area every small_radius=(8.0, 13.0) shape"),
    ({"big_radius": (19.0, 60.0)}, "big_radius=(19.0, 60.0): a shape of bounding radius 75.0 px cannot sit on any "
                                   "patch centre of a 128 px canvas"),  # the triangle's bound: 1.25 x 60
    ({"digit_px": 15}, "digit_px=15: the digit ({extent} px) is too large for one 16 px patch"),
    ({"patch_size": 1}, "digit_px=7: the digit ({extent} px) is too large for one 1 px patch"),  # not image_size
])
def test_refusals_name_the_field_its_value_and_the_bound(overrides: dict, message: str) -> None:
    """The whole message of each refusal: the field, its value, and the bound it broke (with the numbers)."""
    message = message.replace("{extent}", "%dx%d" % digit_extent(overrides.get("digit_px", 7)))
    with pytest.raises(ValueError, match="GlyphQAConfig." + re.escape(message)):
        small_config(**overrides)


def test_geometric_edges_are_accepted() -> None:
    """Edge values that are valid: a canvas of exactly one patch, any positive radius, a digit exactly
    patch_size - 2 px tall (a 1 px rim on each side)."""
    one_patch = small_config(image_size=16, patch_size=16, digit_px=5, shapes=("circle",), big_radius=(6.0, 6.0),
                             min_shapes=1, max_shapes=1, center_jitter=0)
    row = build_split(one_patch, "train", num_images=1)[0]
    assert row["image"].size == (16, 16) and (row["digit_x"], row["digit_y"]) == (8, 8)
    small_config(small_radius=(0.5, 8.0))
    assert max(digit_extent(14)) == 14 and small_config(digit_px=14).digit_px == 14


def test_the_digit_and_its_rim_must_fit_inside_the_smallest_big_shape_exactly_at_the_edge() -> None:
    """The digit plus a 1 px rim must fit the inradius of the big shape at its smallest radius (big_radius[0]):
    exactly fitting is accepted, a little less is refused with the numbers."""
    width, height = digit_extent(7)
    edge = math.hypot(width / 2 + 1, height / 2 + 1)  # 6.36 for the 7x7 px default digit
    _one_shape(big_radius=(edge, 20.0))
    below = math.floor(edge * 10 - 1e-9) / 10  # less than 0.1 px short; the largest radius (20) would hold it
    with pytest.raises(ValueError, match=re.escape(
            f"GlyphQAConfig.digit_px=7: the digit ({width}x{height} px) is too large to fit inside a circle of radius "
            f"{below} (inradius {below:.1f} px); lower digit_px or raise big_radius")):
        _one_shape(big_radius=(below, 20.0))


def test_a_large_digit_must_fit_inside_the_big_shape_in_the_chosen_font() -> None:
    """With large digits (2x the small glyph of the configured font) the same rule holds for the large glyph."""
    width, height = (2 * v for v in digit_extent(7, REGULAR_FONT))
    assert digit_extent(7, REGULAR_FONT) != digit_extent(7)  # the default font's digits are wider
    edge = math.hypot(width / 2 + 1, height / 2 + 1)  # 10.63 for the 12x14 px large digit
    _one_shape(font=REGULAR_FONT, large_digit_fraction=0.5, big_radius=(edge, 20.0))
    below = math.floor(edge * 10 - 1e-9) / 10
    with pytest.raises(ValueError, match=re.escape(
            f"GlyphQAConfig.large_digit_fraction=0.5: a large digit ({width}x{height} px, twice digit_px=7) does not "
            f"fit inside a circle of radius {below} (inradius {below:.1f} px); lower digit_px or raise big_radius")):
        _one_shape(font=REGULAR_FONT, large_digit_fraction=0.5, big_radius=(below, 20.0))


def test_a_large_digit_needs_a_half_resolution_patch_centre_for_the_big_shape() -> None:
    """On a 64 px canvas the half-resolution patch centres are 16 and 48: a circle of bound 15 fits there (and
    every large digit lands on one); a circle of bound 21 fits only full-resolution centres and is refused."""
    fits = _one_shape(image_size=64, big_radius=(14.0, 14.0), center_jitter=0, large_digit_fraction=1.0)
    rows = build_split(fits, "train", num_images=4)
    assert set(rows["digit_size"]) == {"large"} and set(rows["digit_x"]) | set(rows["digit_y"]) <= {16, 48}
    _one_shape(image_size=64, big_radius=(20.0, 20.0), center_jitter=0)  # fine without large digits
    with pytest.raises(ValueError, match=re.escape(
            "GlyphQAConfig.large_digit_fraction=0.5: the big shape fits on no half-resolution patch centre of a 64 px "
            "canvas; lower big_radius or raise image_size")):
        _one_shape(image_size=64, big_radius=(20.0, 20.0), center_jitter=0, large_digit_fraction=0.5)


def test_the_big_shape_takes_every_jitter_offset_while_the_digit_still_fits() -> None:
    """The big shape moves up to center_jitter px off the digit's centre in both axes; the offset is dropped only
    when the digit plus its 1 px rim would leave the shape. With a circle exactly large enough for the largest
    offset (in the configured font), every offset, the four corners included, occurs."""
    jitter = 2
    width, height = digit_extent(7, REGULAR_FONT)
    radius = math.hypot(width / 2 + 1 + jitter, height / 2 + 1 + jitter)
    cfg = _one_shape(font=REGULAR_FONT, center_jitter=jitter, big_radius=(radius, radius))
    offsets = set()
    for index in range(300):
        scene = sample_scene(cfg, rng_for("glyphqa", cfg.seed, "train", index))
        big = scene.shapes[0]
        offsets.add((big.x - scene.digit_center[0], big.y - scene.digit_center[1]))
    span = range(-jitter, jitter + 1)
    assert offsets == {(dx, dy) for dx in span for dy in span}


def _fixed_scene(large: bool, center: tuple[int, int]) -> GlyphScene:
    """One red circle of radius 24 centred on the digit, on a light grey background, white ink."""
    circle = Shape("circle", "red", center[0], center[1], 24.0, (200, 30, 30))
    return GlyphScene((circle,), (250, 245, 240), 3, center, (255, 255, 255), large)


def _check_digit_pixels(img: np.ndarray, glyph: np.ndarray, left: int, top: int, scene: GlyphScene) -> None:
    """Full-ink glyph pixels are the ink, ink-free ones the fill, as is a 3 px ring around the glyph's box; the
    canvas corners are the background."""
    ink, fill = np.array(scene.ink), np.array(scene.shapes[0].fill)
    h, w = glyph.shape
    box = img[top: top + h, left: left + w]
    assert (box[glyph == 255] == ink).all() and (box[glyph == 0] == fill).all()
    ring = img[top - 3: top + h + 3, left - 3: left + w + 3].copy()
    ring[3:-3, 3:-3] = fill
    assert (ring == fill).all()
    for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert tuple(img[y, x]) == scene.background


def test_a_small_digit_is_printed_in_the_configured_font_on_its_centre() -> None:
    """render_scene stamps the small digit with the config's font, centred on the digit centre."""
    cfg = small_config(font=REGULAR_FONT)
    scene = _fixed_scene(False, (56, 72))
    mask = digit_mask(3, 7, REGULAR_FONT)
    left, top, _, _ = digit_box(56, 72, mask)
    _check_digit_pixels(np.asarray(render_scene(scene, cfg)), np.asarray(mask), left, top, scene)


def test_a_large_digit_is_the_small_glyph_doubled_on_a_half_resolution_centre() -> None:
    """A large digit is each pixel of the small glyph (configured font) as a 2x2 block, placed so that the
    half-resolution image holds the small glyph centred on the half of the digit centre."""
    cfg = small_config(font=REGULAR_FONT)
    scene = _fixed_scene(True, (48, 80))
    mask = digit_mask(3, 7, REGULAR_FONT)
    left, top, _, _ = digit_box(24, 40, mask)
    doubled = np.repeat(np.repeat(np.asarray(mask), 2, axis=0), 2, axis=1)
    _check_digit_pixels(np.asarray(render_scene(scene, cfg)), doubled, 2 * left, 2 * top, scene)


def test_a_sampled_scene_is_drawn_on_its_light_background() -> None:
    """The background colour a scene draws is the one painted: light (each channel within background_jitter of
    255) and at every corner of the canvas (no shape reaches the corners)."""
    cfg = small_config(background_jitter=60)
    for index in range(5):
        scene = sample_scene(cfg, rng_for("glyphqa", cfg.seed, "train", index))
        assert len(scene.background) == 3 and all(195 <= c <= 255 for c in scene.background)
        img = np.asarray(render_scene(scene, cfg))
        assert {tuple(img[y, x]) for y in (0, -1) for x in (0, -1)} == {scene.background}


def test_count_color_with_every_colour_present_asks_only_present_colours() -> None:
    """With one colour every shape has it: no absent colour to ask about, and the count is every shape."""
    rows = build_split(small_config(colors=("red",), coarse_qtypes=("count_color",)), "train", num_images=4)
    for row in rows:
        counts = [(q, a) for q, a, t in zip(row["questions"], row["answers"], row["qtypes"]) if t == "count_color"]
        assert counts == [("How many red shapes are there?", str(len(row["objects"])))]


def test_splits_of_one_row_and_no_fine_rows_are_built_and_named() -> None:
    """A split of one image is kept (not omitted, not refused), fine_fraction=0 gives only coarse primary questions,
    and each returned Dataset carries its split name."""
    dsd = generate_glyphqa(small_config(num_images=1, num_validation=1, num_test=0, fine_fraction=0.0))
    assert {name: len(ds) for name, ds in dsd.items()} == {"train": 1, "validation": 1}
    assert {name: str(ds.split) for name, ds in dsd.items()} == {"train": "train", "validation": "validation"}
    assert dsd["train"]["kind"] == dsd["validation"]["kind"] == ["coarse"]


def test_heldout_mix_defaults_to_the_test_size_and_a_thirty_percent_fine_mix() -> None:
    """heldout_mix(cfg): num_test rows, 30% of them fine; another split name also gets num_test rows unless
    num_images says otherwise."""
    cfg = small_config(num_test=10)
    mix = heldout_mix(cfg)
    assert len(mix) == 10 and mix["kind"].count("fine") == 3
    other = heldout_mix(cfg, split="holdout")
    assert len(other) == 10 and other[0]["id"] == "glyphqa-s3-holdout-000000"
    assert len(heldout_mix(cfg, num_images=4, split="holdout")) == 4
    assert len(heldout_mix(cfg, num_images=4)) == 4


@pytest.mark.parametrize(("image_size", "patch_size", "edge"), [(144, 16, 2.0), (117, 9, 2.5), (128, 16, 6.0),
                                                                   (160, 10, 3.0)])
def test_the_biggest_shape_is_asked_left_or_right_only_off_the_midline(image_size: int, patch_size: int,
                                                                      edge: float) -> None:
    """With an odd number of patches per side (144 / 16, 117 / 9) the middle patch centre is on the midline (117 px:
    half a pixel off it, centres are whole pixels), and a big shape there has no side: its left/right (top/bottom)
    question is not asked. A shape further than the jitter plus that half pixel from the midline always gets it, so
    with an even number of patches (128 / 16, 160 / 10) every scene gets both. `edge`: the smallest distance to the
    midline the scenes reach on that side of the rule (the middle patch's farthest jitter on odd canvases, the
    neighbouring patches' nearest on even ones), so the rule's boundary is exercised."""
    cfg = small_config(image_size=image_size, patch_size=patch_size, coarse_qtypes=("position_of_biggest",))
    mid, near, skipped, distances = image_size / 2, cfg.center_jitter + 0.5, 0, set()
    for index in range(300):
        scene = sample_scene(cfg, rng_for("glyphqa", cfg.seed, "train", index))
        big = scene.shapes[0]
        asked = [q.answer for q in scene_questions(scene, cfg, rng_for("glyphqa", cfg.seed, "q", index))
                 if q.qtype == "position_of_biggest"]
        for axis, sides in (("x", ("left", "right")), ("y", ("top", "bottom"))):
            offset = getattr(big, axis) - mid
            distances.add(abs(offset))
            answer = [a for a in asked if a in sides]
            if abs(offset) > near:
                assert answer == [sides[0] if offset < 0 else sides[1]], (index, big)
            else:
                assert answer == [], (index, big)
                skipped += 1
    assert (skipped > 0) == (image_size % (2 * patch_size) != 0)  # odd patch counts put big shapes on the middle
    assert (max(d for d in distances if d <= near) if skipped else min(distances)) == edge


def test_position_margin_zero_is_refused_and_one_never_compares_shapes_on_the_same_line() -> None:
    """Left/right (above/below) is asked only about shapes whose centres differ on that axis: a margin of 0 would
    let two shapes with the same x be asked "left or right of" each other (answered "right"), so it is refused."""
    from adaptune.data.glyphqa import _position_questions

    with pytest.raises(ValueError, match=r"GlyphQAConfig\.position_margin=0: must be >= 1 \(shapes on one line have "
                                         r"no left or right\)"):
        small_config(position_margin=0)
    cfg = small_config(position_margin=1, coarse_qtypes=("relative_position",), max_position_questions=50)
    asked = 0
    for index in range(60):
        scene = sample_scene(cfg, rng_for("glyphqa", cfg.seed, "train", index))
        by_name = {f"{s.color} {s.kind}": s for s in scene.shapes}
        for q in _position_questions(scene.shapes, cfg, rng_for("glyphqa", cfg.seed, "train", index, stream=1)):
            words = q.question.rstrip("?").split()
            a, b = by_name[" ".join(words[2:4])], by_name[" ".join(words[-2:])]
            axis = "x" if q.answer in ("left", "right") else "y"
            assert getattr(a, axis) != getattr(b, axis), (index, q)
            assert q.answer == ({"x": "left", "y": "above"}[axis] if getattr(a, axis) < getattr(b, axis) else
                                {"x": "right", "y": "below"}[axis]), (index, q)
            asked += 1
    assert asked > 0
