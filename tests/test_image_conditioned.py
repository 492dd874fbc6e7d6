"""A resize decision that needs the image: GlyphQA's two digit sizes, the per-question oracle, the shipped policy.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_image_conditioned.py -q   (seconds)
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from adaptune.budget import downsample
from adaptune.data import GlyphQAConfig, build_split
from adaptune.data.glyphs import digit_box, digit_mask
from adaptune.default import DefaultModelError, POLICY, ship_policy, verify_policy
from adaptune.rl.inference import LOW_SUFFICES, NEEDS_FULL, oracle_decisions, row_groups


def config(**overrides) -> GlyphQAConfig:
    return GlyphQAConfig(**{"seed": 5, "num_images": 40, "num_validation": 0, "num_test": 0, **overrides})


@pytest.fixture(scope="module")
def mixed():
    return build_split(config(large_digit_fraction=0.5), "train", fine_fraction=1.0)


def test_off_means_the_rows_of_a_config_without_the_option():
    plain = build_split(config(), "train", num_images=12)
    off = build_split(config(large_digit_fraction=0.0), "train", num_images=12)
    assert [im.tobytes() for im in plain["image"]] == [im.tobytes() for im in off["image"]]
    assert set(plain["digit_size"]) == {"small"}


def test_both_sizes_with_the_same_question(mixed):
    sizes = mixed["digit_size"]
    assert 8 <= sizes.count("large") <= 32 and set(sizes) == {"small", "large"}
    assert {q for q, s in zip(mixed["question"], sizes) if s == "large"} == \
        {q for q, s in zip(mixed["question"], sizes) if s == "small"} == {"What digit is written in the biggest shape?"}


def test_a_large_digit_is_the_small_glyph_at_half_resolution(mixed):
    """BOX downsampling by 2 turns the large digit into exactly the small glyph on a half-resolution patch centre;
    a small digit at half resolution is not its glyph (it is blurred into the shape)."""
    cfg = config(large_digit_fraction=0.5)
    checked, small_uniform = {"large": 0, "small": 0}, 0
    for row in mixed:
        half = np.asarray(downsample(row["image"]), dtype=int)
        mask = digit_mask(row["digit"], cfg.digit_px)
        cx, cy = row["digit_x"] // 2, row["digit_y"] // 2
        left, top, right, bottom = digit_box(cx, cy, mask)
        ink = np.asarray(mask) == 255
        patch = half[top:bottom, left:right]
        solid = patch[ink]  # pixels the glyph fully covers
        uniform = bool((np.abs(solid - solid[0]).max() == 0) and solid[0].tolist() in ([0, 0, 0], [255, 255, 255]))
        if row["digit_size"] == "large":
            assert row["digit_x"] % (2 * cfg.patch_size) == cfg.patch_size  # a half-resolution patch centre
            assert uniform, row["id"]
        else:
            small_uniform += uniform
        checked[row["digit_size"]] += 1
    assert min(checked.values()) >= 5 and small_uniform == 0


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="large_digit_fraction"):
        config(large_digit_fraction=1.5)
    with pytest.raises(ValueError, match="large digit .* does not fit"):
        config(large_digit_fraction=0.5, digit_px=9)


def test_oracle_is_per_question_and_groups_split_by_it():
    low = [True, False, False, True]
    tool = [True, True, False, False]
    needs = oracle_decisions(low, tool)
    assert needs == [False, True, False, False]
    rows = [{"kind": "fine", "digit_size": "large"}, {"kind": "fine", "digit_size": "small"},
            {"kind": "coarse"}, {"kind": "coarse"}]
    groups = row_groups(rows, needs)
    assert groups[NEEDS_FULL] == [1] and groups[LOW_SUFFICES] == [0, 2, 3]
    assert groups["fine/large digit"] == [0] and groups["fine/small digit"] == [1]
    assert groups["coarse/low suffices"] == [2, 3] and "coarse/needs full" not in groups


def test_large_digits_outside_glyphqa_are_refused(tmp_path):
    from adaptune.config import RecipeError, load_recipe
    from adaptune.rl.sections import parse_grpo_section

    recipe = load_recipe("recipes/qwen3_vl/glyphqa/visionthink_grpo.yaml",
                         [f"grpo.data.dataset={tmp_path}", f"grpo.eval.dataset={tmp_path}"])
    with pytest.raises(RecipeError, match="large_digit_fraction"):
        parse_grpo_section(recipe)


# ------------------------------------------------------------------------------------------ the shipped policy


def test_shipped_policy_checksum_and_tampering(tmp_path):
    info = verify_policy()
    assert (POLICY / "adapter_model.safetensors").stat().st_size < 4_000_000 and info["seed"] is not None
    copy = tmp_path / "policy"
    shutil.copytree(POLICY, copy)
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(DefaultModelError, match="does not match its checksum"):
        verify_policy(copy)
    (copy / "POLICY.json").unlink()
    with pytest.raises(DefaultModelError, match="make demo-rl"):
        verify_policy(copy)


def test_ship_policy_records_checksums_and_the_run(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(POLICY / name, run / "adapter" / name)
    (run / "eval.json").write_text(json.dumps({"steps": 7, "eval/policy/accuracy": 0.5, "other": 1}))
    (run / "config.yaml").write_text("training:\n  seed: 3\n")
    record = ship_policy(run, tmp_path / "dest")
    assert record["seed"] == 3 and record["steps"] == 7 and record["headline"] == {"eval/policy/accuracy": 0.5}
    assert verify_policy(tmp_path / "dest")["sha256"] == record["sha256"]
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        (run / "adapter" / "adapter_model.safetensors").unlink() or ship_policy(run, tmp_path / "dest2")


def _policy_resizes(num_images: int = 16, seed: int = 11) -> dict[str, float]:
    """Greedy resize rate of the shipped policy on the digit question, per digit size (same question text)."""
    from adaptune.budget.two_turn import answer_with_resolution_policy
    from adaptune.default import load_default_policy

    loaded = load_default_policy()
    rows = build_split(GlyphQAConfig(seed=seed, large_digit_fraction=0.5), "test", num_images=num_images,
                       fine_fraction=1.0)
    results = answer_with_resolution_policy(loaded.model, loaded.processor, rows["image"], rows["question"],
                                            family=loaded.family, max_new_tokens=48)
    return {size: float(np.mean([r.resized for r, s in zip(results, rows["digit_size"]) if s == size]))
            for size in ("small", "large")}


@pytest.fixture(scope="module")
def policy_resizes():
    return _policy_resizes()


def test_shipped_policy_resizes_on_small_digits(policy_resizes, one_thread):
    """The shipped policy reads the digit question as one that needs the full image when the digit is small."""
    assert policy_resizes["small"] >= 0.9, policy_resizes


# The shipped policy (250 steps, seed 0, KL 0.04; docs/visionthink.md) resized on 0.29 of the 41 large-digit
# questions of the held-out 300 and on every small-digit one. Its predecessor (no KL) resized on every digit question.
def test_shipped_policy_resizes_more_on_small_digits_than_large(policy_resizes, one_thread):
    """Same question, different images: the trained policy (greedy) must resize far more often when the digit is
    small (unreadable at half resolution) than when it is large."""
    assert policy_resizes["large"] <= 0.3, policy_resizes
    assert policy_resizes["small"] >= policy_resizes["large"] + 0.6, policy_resizes
