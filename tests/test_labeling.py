"""Resolution labelling: the VisionThink rule on hand-made outcomes, the dataset it writes, the CLI."""

from __future__ import annotations

import json

import datasets
import pytest
from PIL import Image

from adaptune.cli import main
from adaptune.rl import labeling
from adaptune.budget.two_turn import Result
from adaptune.rl.labeling import (
    DROP,
    LOW_RES_SUFFICES,
    NEEDS_HIGH_RES,
    high_res_threshold,
    label_dataset,
    label_sample,
)


@pytest.mark.parametrize(("low", "high", "n", "label"), [
    (8, 8, 8, LOW_RES_SUFFICES),
    (7, 8, 8, DROP),          # not all correct at low resolution, gap 1
    (2, 8, 8, NEEDS_HIGH_RES),  # gap 6 = threshold
    (0, 6, 8, NEEDS_HIGH_RES),
    (2, 7, 8, DROP),          # gap 5
    (0, 0, 8, DROP),          # too hard at both
    (8, 7, 8, DROP),
    (1, 4, 4, NEEDS_HIGH_RES),  # n=4: threshold 3
    (4, 4, 4, LOW_RES_SUFFICES),
    (4, 15, 16, DROP),        # n=16: threshold 12, gap 11
    (3, 15, 16, NEEDS_HIGH_RES),
])
def test_label_rule(low, high, n, label):
    assert label_sample(low, high, n) == label


def test_threshold_scales_with_n():
    assert [high_res_threshold(n) for n in (1, 2, 4, 8, 16)] == [1, 2, 3, 6, 12]
    with pytest.raises(ValueError):
        label_sample(9, 0, 8)


def test_label_dataset_adds_columns_and_round_trips(tmp_path):
    ds = datasets.Dataset.from_dict({"question": ["a", "b", "c"], "answer": ["1", "2", "3"]})
    out = label_dataset(ds, [8, 1, 3], [8, 8, 4], 8)
    assert out["label"] == [LOW_RES_SUFFICES, NEEDS_HIGH_RES, DROP]
    assert out["n_rollouts"] == [8, 8, 8]
    out.save_to_disk(str(tmp_path / "ds"))
    assert datasets.load_from_disk(str(tmp_path / "ds"))["label"] == out["label"]
    again = label_dataset(out, [0, 0, 0], [0, 0, 0], 8)  # relabelling replaces the columns
    assert again["label"] == [DROP] * 3 and again.column_names.count("label") == 1


def test_rollout_counts_use_both_resolutions(monkeypatch):
    seen = []

    def fake(model, processor, images, questions, always=None, **kwargs):
        seen.append((always, len(images)))
        answer = "7" if always == "full" else "1"
        return [Result(answer, False, 16 if always == "full" else 4, 1, []) for _ in images]

    monkeypatch.setattr("adaptune.budget.two_turn.answer_with_resolution_policy", fake)
    images = [Image.new("RGB", (128, 128))] * 2
    counts = labeling.rollout_correct_counts(None, None, images, ["q", "q"], ["7", "1"], n=3)
    assert seen == [("low", 6), ("full", 6)]
    assert counts == {"low": [0, 3], "full": [3, 0]}



def test_cli_labels_a_tiny_model(tmp_path, capsys, one_thread):
    out = tmp_path / "labels"
    code = main(["label-resolution", "tiny:qwen3_vl", "--n", "2", "--num", "2", "--max-new-tokens", "2",
                 "--out", str(out)])
    assert code == 0
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 2 and set(ds["label"]) <= {LOW_RES_SUFFICES, NEEDS_HIGH_RES, DROP}
    summary = json.loads((out / "label_summary.json").read_text())
    assert summary["rows"] == 2 and summary["threshold"] == 2 and "by_kind" in summary
