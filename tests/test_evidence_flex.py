"""benchmarks/evidence_flex.py keeps running: a lever run on tiny settings and the flexible-vs-fixed lever table.

The accuracies of the smoke run are not asserted (2 test questions); the lever table's arithmetic is, on result files
written here by hand.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "evidence_flex.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("evidence_flex", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lever_run_trains_3x_steps_with_uniform_weights_and_per_budget_norm(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1", "--eval-n", "2", "--batch-size", "2",
                          "--configs", "flex-3x-uniform-pbnorm", "--out", str(tmp_path / "r.json"), "--runs",
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    run = result["runs"]["flex-3x-uniform-pbnorm"]
    assert run["steps"] == 3 and all(run[f"eval/b{b}/n"] == 2 for b in (4, 9, 16))
    adapter = json.loads((tmp_path / "runs" / "flex-3x-uniform-pbnorm" / "adapter" / "adapter_config.json")
                         .read_text())
    assert adapter["per_budget_norm"] is True and adapter["budget_weights"] == [1.0, 1.0, 1.0]
    bad = subprocess.run([sys.executable, str(SCRIPT), "--configs", "flex,flex-huge"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "flex-huge" in bad.stderr
    no_teachers = subprocess.run([sys.executable, str(SCRIPT), "--configs", "flex-distill", "--out",
                                  str(tmp_path / "d.json"), "--runs", str(tmp_path / "no-fixed-runs")],
                                 capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert no_teachers.returncode != 0 and "flex-distill needs the fixed projectors" in no_teachers.stderr
    assert "no-fixed-runs/fixed4/adapter" in no_teachers.stderr


def _result(seed: int, fixed: dict[int, float], flex: dict[int, float], lever: dict[int, float] | None) -> dict:
    runs = {f"fixed{b}": {f"eval/b{b}/accuracy": acc, "steps": 300} for b, acc in fixed.items()}
    runs["flex"] = {f"eval/b{b}/accuracy": acc for b, acc in flex.items()} | {"steps": 300}
    if lever is not None:
        runs["flex-3x-uniform"] = {f"eval/b{b}/accuracy": acc for b, acc in lever.items()} | {"steps": 900}
    return {"meta": {"seed": seed, "eval_n": 400, "steps": 300, "batch_size": 16}, "runs": runs}


def test_lever_table_gaps_are_paired_per_seed_and_missing_levers_name_their_seeds(tmp_path):
    bench = _bench_module()
    files = []
    for seed, fixed, flex, lever in [(0, {4: 0.70, 9: 0.70, 16: 0.70}, {4: 0.60, 9: 0.70, 16: 0.72},
                                      {4: 0.70, 9: 0.71, 16: 0.70}),
                                     (1, {4: 0.80, 16: 0.74}, {4: 0.76, 9: 0.70, 16: 0.74}, None)]:
        path = tmp_path / f"s{seed}.json"
        path.write_text(json.dumps(_result(seed, fixed, flex, lever)))
        files.append(str(path))
    summary, md = bench.lever_summary(files)
    assert summary["fixed"][4]["mean"] == pytest.approx(0.75)
    gap4 = summary["levers"]["flex"]["budgets"][4]["gap_to_fixed"]
    assert gap4["values"] == pytest.approx([-0.10, -0.04]) and gap4["mean"] == pytest.approx(-0.07)
    lever = summary["levers"]["flex-3x-uniform"]
    assert lever["seeds"] == [0] and lever["steps"] == 900
    assert lever["budgets"][4]["gap_to_fixed"]["mean"] == pytest.approx(0.0)
    assert "| flex-3x-uniform (1:1:1, 3x steps) | 900 | 0 |" in md
    assert "-0.070 +- 0.042" in md
    # seed 1 has no fixed9: the fixed row and flex's gap at 9 are over seed 0 only, and say so
    assert summary["fixed"][9]["seeds"] == [0] and "| 0.750 +- 0.071 | 0.700 (1) | 0.720 +- 0.028 |" in md
    assert summary["levers"]["flex"]["budgets"][9]["gap_to_fixed"]["values"] == pytest.approx([0.0])
    assert summary["levers"]["flex"]["budgets"][9]["accuracy"]["n"] == 2 and "| -0.070 +- 0.042 | +0.000 (1) |" in md
    assert summary["binomial_std_fixed"][4] == pytest.approx((0.75 * 0.25 / 400) ** 0.5)
    same_seed = tmp_path / "again.json"
    same_seed.write_text(Path(files[0]).read_text())
    with pytest.raises(SystemExit, match="share a seed"):
        bench.lever_summary([files[0], str(same_seed)])
