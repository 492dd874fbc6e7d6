"""The benchmark scripts keep running (smoke runs on tiny shapes; the numbers themselves are not asserted)."""

from __future__ import annotations

import json
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
                          "--repeats", "1", "--no-save", "--no-adapter"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "visual tokens per answered question, policy / always-full" in out.stdout
    assert "wall time per answered question, policy / always-full" in out.stdout


def test_reducers_bench_smoke():
    """Every reducer at budgets 1/4/9 on the embedded default: both ratio tables and the overhead column print."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_reducers.py"), "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "## LLM prefill" in out.stdout and "## full forward" in out.stdout and "selection ms" in out.stdout
    for case in ("full (16 tokens)", "fastervlm K=1", "divprune K=4", "tome K=9"):
        assert case in out.stdout
