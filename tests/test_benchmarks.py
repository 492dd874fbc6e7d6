"""The benchmark scripts keep running (smoke runs on tiny shapes; the numbers themselves are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_smoke_on_cpu(tmp_path):
    """benchmarks/gpu_bench.py --smoke: every part of the GPU script (TokenFLEX prefill on both VLM shapes, the judge,
    GRPO through adaptune.train.run_recipe) runs at tiny sizes on CPU."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--smoke", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=400)
    result = json.loads((tmp_path / "gpu_bench_smoke.json").read_text())
    for name in ("prefill_qwen3_vl_2b", "prefill_qwen2_5_vl_7b", "judge", "grpo_qwen3_vl_2b"):
        assert result[name]["ok"] is True, result[name]
    cases = result["prefill_qwen3_vl_2b"]["cases"]
    assert [c["visual_tokens"] for c in cases.values()] == [16, 1, 4]
    assert result["judge"]["items"] == 8 and result["judge"]["backend"] == "hf (in-process)"
    grpo = result["grpo_qwen3_vl_2b"]
    assert grpo["steps"] == 1 and grpo["world_size"] == 1 and grpo["seconds_per_step"] > 0


def test_resolution_policy_bench_smoke(tmp_path):
    """Policy vs always-full on a few held-out questions; the ratio lines are printed (numbers not asserted)."""
    missing = tmp_path / "no-adapter-here"  # the default's own choice, not a GRPO adapter from runs/
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_resolution_policy.py"), "--questions", "6",
                          "--repeats", "1", "--no-save", "--adapter", str(missing)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "no-adapter-here" in out.stderr  # a missing adapter folder is an error
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_resolution_policy.py"), "--questions", "6",
                          "--repeats", "1", "--no-save", "--no-adapter", "--large-questions", "3", "--large-size",
                          "128"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("visual tokens per answered question, policy / always-full") == 2  # default + large
    assert out.stdout.count("wall time per answered question, policy / always-full, with KV reuse") == 2
    assert out.stdout.count("wall time per answered question, policy / always-full, re-encoding") == 2
    assert "same answers both ways: True" in out.stdout


def test_grpo_overhead_bench_smoke():
    """adaptune's GRPO path vs plain TRL with the same environment and reward logic: 2 steps, 1 repeat, both run and
    the ratio line prints (numbers not asserted)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_grpo_overhead.py"), "--steps", "2",
                          "--repeats", "1", "--no-save"], capture_output=True, text=True, timeout=400,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratio adaptune / plain TRL: mean" in out.stdout and "95% interval" in out.stdout
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith(("adaptune ", "plain "))}
    assert set(lines) == {"adaptune", "plain"} and all("s/step" in line for line in lines.values())


def test_reducers_bench_smoke():
    """Every reducer at budgets 1/4/9 on the embedded default: both ratio tables and the overhead column print."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_reducers.py"), "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "## LLM prefill" in out.stdout and "## full forward" in out.stdout and "selection ms" in out.stdout
    for case in ("full (16 tokens)", "fastervlm K=1", "divprune K=4", "tome K=9"):
        assert case in out.stdout


def test_data_memory_bench_smoke():
    """bench_data_memory.py on a few small rows: both paths measured in fresh processes, growth lines printed."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_data_memory.py"), "--rows", "40",
                          "--side", "64"], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GRPO rows (Dataset.map)    per 1,000 rows (10 -> 40)" in out.stdout
    assert "decoded list (old peak)    per 1,000 rows (10 -> 40)" in out.stdout


def test_generalisation_smoke(tmp_path):
    """benchmarks/generalisation.py with the shipped policy on 2 shifted sets of 8 questions: JSON and markdown table
    written, every method on every set, the oracle never below always-low or the tool path (it picks per question)."""
    script = str(ROOT / "benchmarks" / "generalisation.py")
    bad = subprocess.run([sys.executable, script, "--sets", "reference,no-such-set", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no-such-set" in bad.stderr and not (tmp_path / "x.json").exists()
    out = subprocess.run([sys.executable, script, "--num", "8", "--sets", "reference,all-large", "--out",
                          str(tmp_path / "gen")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "gen.json").read_text())
    assert list(result["sets"]) == ["reference", "all-large"] and result["num"] == 8 and result["seeds"] == [0]
    assert result["sets"]["all-large"]["config"] == {"large_digit_fraction": 1.0}
    for name, entry in result["sets"].items():
        methods = entry["results"]["0"]["methods"]
        assert set(methods) == {"policy", "low", "full", "resize_all", "oracle"}, name
        assert all(cells["all"]["n"] == 8 for cells in methods.values())
        assert methods["low"]["all"]["visual_tokens"] == 4 and methods["full"]["all"]["visual_tokens"] == 16
        oracle = methods["oracle"]["all"]["accuracy"]
        assert oracle >= max(methods["low"]["all"]["accuracy"], methods["resize_all"]["all"]["accuracy"])
        groups = methods["policy"]
        assert groups["needs full"]["n"] + groups["low suffices"]["n"] == 8
    assert "fine/small digit" not in result["sets"]["all-large"]["results"]["0"]["methods"]["policy"]
    table = (tmp_path / "gen.md").read_text()
    assert "| set | n | policy acc |" in table and "| all-large | 8 |" in table and table.strip() in out.stdout
    (tmp_path / "gen.md").unlink()  # --render rebuilds the same table from the JSON alone
    again = subprocess.run([sys.executable, script, "--render", str(tmp_path / "gen.json")], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and (tmp_path / "gen.md").read_text() == table, again.stderr[-2000:]
