"""benchmarks/grpo_seeds.py (the seed-spread table of GRPO runs) and benchmarks/probe_decision_state.py (the probe)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str = "grpo_seeds"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_gives_each_run_and_mean_and_spread(tmp_path):
    seeds = _module()
    for name, acc, cut in (("s0", 0.7, False), ("s1", 0.9, True)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(
            {"eval/policy/accuracy": acc, "eval/policy/visual_tokens": 8.0, "cut_short": cut}))
    text = seeds.table([tmp_path / "s0", tmp_path / "s1"])
    assert "| policy accuracy | 0.700 | 0.900 | 0.800 +- 0.100 |" in text
    assert "s1 (CUT SHORT)" in text and "oracle" not in text  # figures no run has are left out
    (tmp_path / "s2").mkdir()
    with pytest.raises(SystemExit, match="eval.json not found"):
        seeds.table([tmp_path / "s2"])


def test_probe_accuracy_finds_a_linear_signal_and_not_noise():
    import numpy as np

    probe = _module("probe_decision_state")
    rng = np.random.default_rng(0)
    labels = (rng.random(120) < 0.5).astype(float)
    features = rng.normal(size=(120, 16))
    assert probe.probe_accuracy(features, labels) < 0.75  # labels unrelated to the features
    features[:, 3] += 3.0 * (2 * labels - 1)  # one direction carries the label
    assert probe.probe_accuracy(features, labels) > 0.95
