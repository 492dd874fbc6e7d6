"""benchmarks/grpo_seeds.py: the seed-spread table of GRPO runs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "grpo_seeds.py"


def _module():
    spec = importlib.util.spec_from_file_location("grpo_seeds", SCRIPT)
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
