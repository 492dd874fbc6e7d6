"""TokenFLEX evidence on GlyphQA: one flexible projector vs fixed-budget projectors, each evaluated at every budget.

Trains, with the SAME number of steps / batch / lr on the same base model ("default" = the embedded tiny Qwen3-VL):
- flex     : budgets {4, 9, 16} drawn per batch at 2:3:5 (the paper's 64/144/256 scaled to an 8x8 patch grid),
- fixed4 / fixed9 / fixed16 : one budget only,
then evaluates every projector at 4, 9 and 16 visual tokens on the first --eval-n GlyphQA test questions (accuracy
overall, per kind coarse / fine, visual tokens per answer). The base model's own merger (16 tokens, no adapter) is the
reference row.

Answer format: the default was trained to answer plain VQA as `<answer>X</answer>` (adaptune/default/sft.py), so the
training target here is exactly that (the LM is frozen; only the projector learns). `--answer-format tagged|plain`
uses flex_vqa's own formats instead.

    .venv/bin/python benchmarks/evidence_flex.py --steps 200 --eval-n 150
    .venv/bin/python benchmarks/evidence_flex.py --steps 10 --eval-n 16 --configs flex   # timing probe

Writes benchmarks/results/evidence_flex.json and benchmarks/results/evidence_flex.md (run dirs under runs/evidence_flex/).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (4, 9, 16)
CONFIGS = {"flex": ([4, 9, 16], [2.0, 3.0, 5.0]), "fixed4": ([4], [1.0]), "fixed9": ([9], [1.0]),
           "fixed16": ([16], [1.0])}


def register_tasks(answer_format: str) -> tuple[str, str]:
    """Task names for the flex run and the base reference, with the chosen answer target."""
    from adaptune.registry import TASKS
    from adaptune.tasks.flex_vqa import FlexVQATask
    from adaptune.tasks.vqa import VQATask

    if answer_format != "answer_tag":
        return "flex_vqa", "vqa_sft"

    def _target(self, answer: str) -> str:
        return f"<answer>{answer}</answer>"

    names = ("evidence_flex_vqa", "evidence_vqa")
    for name, base in zip(names, (FlexVQATask, VQATask)):
        try:
            TASKS.get(name)
        except KeyError:
            cls = type(name, (base,), {"_target": _target, "description": base.description + " (<answer> target)"})
            TASKS.register(name)(cls)
    return names


def run_one(name: str, args: argparse.Namespace, task_name: str, base_task: str) -> dict:
    from adaptune.config import load_recipe
    from adaptune.train import run_recipe

    fmt = "plain" if args.answer_format == "answer_tag" else args.answer_format
    common = {"dataset": "glyphqa", "num_train": args.num_train, "num_eval": args.eval_n, "answer_format": fmt,
              "max_new_tokens": args.max_new_tokens, "eval_batch_size": args.eval_batch_size}
    if name == "base":
        data = {"name": "evidence_flex-base", "model": {"source": args.source},
                "task": {"name": base_task, "params": common}, "adapter": {"method": "none"},
                "training": {"max_steps": 0, "eval_limit": args.eval_n, "seed": args.seed}}  # seed picks the data
    else:
        budgets, weights = CONFIGS[name]
        data = {"name": f"evidence_flex-{name}", "model": {"source": args.source},
                "task": {"name": task_name, "params": {**common, "eval_budgets": list(BUDGETS)}},
                "adapter": {"method": "flex_projector", "params": {"budgets": budgets, "budget_weights": weights}},
                "training": {"max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
                             "learning_rate": args.lr, "save_steps": max(args.steps, 1) * 10,
                             "logging_steps": max(1, args.steps // 10), "eval_limit": args.eval_n,
                             "seed": args.seed}}
    data["output"] = {"dir": str(Path(args.runs) / name), "overwrite": True}
    t0 = time.time()
    run_dir = run_recipe(load_recipe(data=data))
    summary = json.loads((Path(run_dir) / "eval.json").read_text())
    summary["run_dir"] = str(run_dir)
    summary["bench_seconds"] = round(time.time() - t0, 1)
    return summary


def rows_of(name: str, summary: dict) -> list[dict]:
    out = []
    if name == "base":
        out.append({"projector": "base merger (no adapter)", "eval_budget": 16,
                    **{k: summary.get(f"eval/{k}") for k in ("accuracy", "accuracy/coarse", "accuracy/fine",
                                                             "visual_tokens", "n")}})
        return out
    for b in BUDGETS:
        out.append({"projector": name, "eval_budget": b,
                    **{k: summary.get(f"eval/b{b}/{k}") for k in ("accuracy", "accuracy/coarse", "accuracy/fine",
                                                                  "visual_tokens", "n")}})
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    def f(x, digits=3):
        return "-" if x is None else f"{x:.{digits}f}"

    lines = [f"TokenFLEX evidence: base `{meta['source']}`, {meta['steps']} steps x batch {meta['batch_size']} "
             f"(lr {meta['lr']}) per projector, {meta['eval_n']} GlyphQA test questions.", "",
             "| projector | eval budget | accuracy | coarse | fine | visual tokens/answer | n |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['projector']} | {r['eval_budget']} | {f(r['accuracy'])} | {f(r['accuracy/coarse'])} | "
                     f"{f(r['accuracy/fine'])} | {f(r['visual_tokens'], 1)} | {f(r['n'], 0)} |")
    # the accuracy matrix: projector x budget
    lines += ["", "| accuracy | " + " | ".join(f"@{b}" for b in BUDGETS) + " |", "|---|" + "---|" * len(BUDGETS)]
    for name in [n for n in CONFIGS if any(r["projector"] == n for r in rows)]:
        acc = {r["eval_budget"]: r["accuracy"] for r in rows if r["projector"] == name}
        lines.append(f"| {name} | " + " | ".join(f(acc.get(b)) for b in BUDGETS) + " |")
    return "\n".join(lines) + "\n"


def aggregate(files: list[str]) -> str:
    """Mean +- std over runs (e.g. seeds) of the accuracy matrix, overall and per kind, as markdown."""
    import statistics

    results = [json.loads(Path(f).read_text()) for f in files]
    lines = [f"Mean +- std over {len(results)} runs ({', '.join(Path(f).name for f in files)}).", ""]
    for key in ("accuracy", "accuracy/coarse", "accuracy/fine"):
        lines += [f"| {key} | " + " | ".join(f"@{b}" for b in BUDGETS) + " | mean over budgets |",
                  "|---|" + "---|" * (len(BUDGETS) + 1)]
        for name in ("base", *CONFIGS):
            runs = [r["runs"][name] for r in results if name in r["runs"]]
            if not runs:
                continue
            cells, means = [], []
            for b in BUDGETS:
                k = f"eval/{key}" if name == "base" else f"eval/b{b}/{key}"
                if name == "base" and b != 16:
                    cells.append("-")
                    continue
                v = [run[k] for run in runs]
                means.append(statistics.mean(v))
                cells.append(f"{statistics.mean(v):.3f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}")
            label = "base merger (no adapter)" if name == "base" else name
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {statistics.mean(means):.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-n", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--num-train", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", default="default")
    ap.add_argument("--configs", default="base,flex,fixed16,fixed4,fixed9",
                    help="comma list of base, flex, fixed4, fixed9, fixed16")
    ap.add_argument("--answer-format", default="answer_tag", choices=("answer_tag", "plain", "tagged"))
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "evidence_flex"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evidence_flex.json"))
    ap.add_argument("--aggregate", nargs="+", metavar="JSON",
                    help="only summarise earlier result files (mean +- std), print markdown and exit")
    args = ap.parse_args()
    if args.aggregate:
        print(aggregate(args.aggregate))
        return

    import adaptune  # noqa: F401  (methods and tasks registered)

    task_name, base_task = register_tasks(args.answer_format)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(args, k) for k in ("source", "steps", "batch_size", "lr", "eval_n", "num_train", "seed",
                                          "answer_format", "max_new_tokens")}
    result = {"meta": meta, "runs": {}, "rows": []}
    if out.exists():  # keep runs of other configs from an earlier invocation with the same settings
        old = json.loads(out.read_text())
        if old.get("meta") == meta:
            result = old
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        print(f"=== {name}", flush=True)
        summary = run_one(name, args, task_name, base_task)
        result["runs"][name] = summary
        order = ["base", *CONFIGS]
        result["rows"] = [r for n in order if n in result["runs"] for r in rows_of(n, result["runs"][n])]
        out.write_text(json.dumps(result, indent=2))
        out.with_suffix(".md").write_text(markdown(result["rows"], meta))
        print(f"{name}: train {summary.get('train_seconds')} s, total {summary['bench_seconds']} s", flush=True)
        print(markdown(result["rows"], meta), flush=True)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
