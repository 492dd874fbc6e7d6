"""Judge throughput against a local OpenAI-compatible server: requests per second, cold cache vs warm cache.

    python benchmarks/bench_judge.py [--n 200]

The server is the stdlib fault-injecting server used by the tests (in "grade" mode it answers a real verdict for
each quoted question), over loopback, so the numbers measure the judge client: concurrency, HTTP, parsing, caching.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, save  # noqa: E402
from fault_server import FaultServer  # noqa: E402

from adaptune.rl.judges import JudgeItem, build_judge  # noqa: E402


def run(n: int, repeats: int) -> dict:
    items = [JudgeItem(question=f"What digit is shown? #{i}", reference=str(i % 10), answer=str((i * 7) % 10))
             for i in range(n)]
    cold, warm = [], []
    with FaultServer(default="grade") as server:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                judge = build_judge({"name": "openai", "base_url": server.base_url, "model": "local",
                                     "concurrency": 16, "cache_path": str(Path(tmp) / "cache.sqlite")})
                t0 = time.perf_counter()
                verdicts = judge.score_sync(items)
                cold.append(n / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                again = judge.score_sync(items)
                warm.append(n / (time.perf_counter() - t0))
                assert [v.score for v in verdicts] == [v.score for v in again]
    result = {"n": n, "cold_rps": statistics.median(cold), "warm_rps": statistics.median(warm),
              "warm_over_cold": statistics.median(w / c for w, c in zip(warm, cold)),
              "spread_cold": [min(cold), max(cold)], "spread_warm": [min(warm), max(warm)]}
    print(f"\n## judge throughput on {machine()['platform']}")
    print(f"cold cache: {result['cold_rps']:.0f} req/s   warm cache: {result['warm_rps']:.0f} req/s   "
          f"warm/cold speed-up: {result['warm_over_cold']:.1f}x  (median of {repeats})")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    save("judge_throughput", run(args.n, args.repeats))
