"""Mean and spread of GRPO runs' held-out figures: one row per figure, one column per run, then mean +- std.

Reads each run directory's eval.json (written by `adaptune train` for `kind: grpo`), so the runs must have finished
their evaluation. Use it for the seed spread of a recipe (`training.seed=0/1/2`), or to put levers side by side.

    python benchmarks/grpo_seeds.py runs/seed-0 runs/seed-1 runs/seed-2
    python benchmarks/grpo_seeds.py runs/seed-* --out benchmarks/results/grpo_seeds.md

A run marked CUT SHORT (its guard stopped it before `training.max_steps`) is flagged in the table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

FIGURES = (
    ("policy accuracy", "eval/policy/accuracy"),
    ("policy visual tokens", "eval/policy/visual_tokens"),
    ("always-full accuracy", "eval/full/accuracy"),
    ("oracle accuracy", "eval/oracle/accuracy"),
    ("oracle visual tokens", "eval/oracle/visual_tokens"),
    ("policy / always-full accuracy", "eval/accuracy_vs_full"),
    ("policy / oracle tokens", "eval/tokens_vs_oracle"),
    ("resize rate, small digit", "eval/policy/resize_rate/small_digit"),
    ("resize rate, large digit", "eval/policy/resize_rate/large_digit"),
    ("resize rate, needs full", "eval/policy/resize_rate/needs_full"),
    ("resize rate, low suffices", "eval/policy/resize_rate/low_suffices"),
)


def read_run(run: Path) -> dict:
    """A run's eval.json, with a clear error when the run has none (not finished, or not a GRPO run)."""
    path = run / "eval.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: has {run} finished its GRPO run and evaluation?")
    return json.loads(path.read_text())


def table(runs: list[Path]) -> str:
    """The markdown table: figure | run ... | mean +- std (population std over the runs that have the figure)."""
    evals = [read_run(r) for r in runs]
    names = [r.name + (" (CUT SHORT)" if e.get("cut_short") else "") for r, e in zip(runs, evals)]
    lines = ["| figure | " + " | ".join(names) + " | mean +- std |", "|---" * (len(runs) + 2) + "|"]
    for label, key in FIGURES:
        values = [e.get(key) for e in evals]
        if all(v is None for v in values):
            continue
        have = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        cells = ["-" if v is None else f"{v:.3f}" for v in values]
        spread = f"{statistics.mean(have):.3f} +- {statistics.pstdev(have):.3f}" if have else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {spread} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="GRPO run directories (each with eval.json)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    text = table(args.runs)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
