"""The benchmark scripts keep running (smoke runs on tiny shapes; the numbers themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_smoke_on_cpu(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--preset", "tiny", "--device", "cpu",
                    "--steps", "1", "--out", str(tmp_path)], check=True, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert set(result["prefill"]) == {"64", "4", "9", "16"}
    assert result["grpo"]["step_s"] > 0 and result["grpo"]["gen_tokens_per_s"] > 0
