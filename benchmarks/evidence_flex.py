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

Levers ("what does flex need to match each fixed projector at its own budget"; names in LEVERS, run with --configs):
budget weights (flex-uniform 1:1:1, flex-small 5:3:2), equal exposure (flex-3x-uniform: 3x the steps at 1:1:1, so each
budget gets as many steps as its fixed projector; flex-3x: 3x at 2:3:5), per-budget normalisation (flex-pbnorm: the
adapter's `per_budget_norm`), and distillation (flex-distill: + KL to the same seed's fixedN answer logits at budget N,
an objective that exists only in this script). `--fixed-eval own` evaluates fixedN only at N. One result file per seed,
then `--levers-aggregate` builds the per-budget table with paired gaps (flex - fixedN on the same seed):

    for S in 0 1; do .venv/bin/python benchmarks/evidence_flex.py --steps 300 --eval-n 400 --seed $S --fixed-eval own \
        --configs fixed4,fixed9,fixed16,flex,flex-3x-uniform,flex-pbnorm,flex-distill \
        --runs runs/evidence_flex_levers_s$S --out benchmarks/results/evidence_flex_levers_s$S.json; done
    .venv/bin/python benchmarks/evidence_flex.py --levers-aggregate benchmarks/results/evidence_flex_levers_s*.json \
        --out benchmarks/results/evidence_flex_levers.json
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
# Levers for "what does flex need to match each fixed projector at its own budget" (--configs names, beside CONFIGS):
# name -> (budgets, weights, steps multiplier, per_budget_norm). "3x" = three times --steps, so with uniform weights
# each budget gets as many steps (in expectation) as its fixed counterpart ("equal exposure").
LEVERS = {
    "flex-uniform": ([4, 9, 16], [1.0, 1.0, 1.0], 1, False),
    "flex-small": ([4, 9, 16], [5.0, 3.0, 2.0], 1, False),
    "flex-3x": ([4, 9, 16], [2.0, 3.0, 5.0], 3, False),
    "flex-3x-uniform": ([4, 9, 16], [1.0, 1.0, 1.0], 3, False),
    "flex-pbnorm": ([4, 9, 16], [2.0, 3.0, 5.0], 1, True),
    "flex-3x-uniform-pbnorm": ([4, 9, 16], [1.0, 1.0, 1.0], 3, True),
    "flex-distill": ([4, 9, 16], [2.0, 3.0, 5.0], 1, False),  # + KL to fixedN's answer logits at budget N
}


def run_spec(name: str) -> tuple[list[int], list[float], int, bool]:
    """(budgets, weights, steps multiplier, per_budget_norm) of a CONFIGS or LEVERS name."""
    return LEVERS[name] if name in LEVERS else (*CONFIGS[name], 1, False)


def lever_note(name: str) -> str:
    """What a flexible run changes, read off its spec: budget weights, steps, the per-budget norm, KL."""
    _, weights, mult, per_budget_norm = run_spec(name)
    parts = [":".join(f"{w:g}" for w in weights), f"{mult}x steps"]
    if per_budget_norm:
        parts.append("per-budget norm")
    if name == "flex-distill":
        parts.append("+ KL to fixedN at N")
    return ", ".join(parts)


def distill_objective(teachers: dict[int, Path], alpha: float):
    """TokenFLEX's objective plus distillation from fixed-budget projectors (benchmark-only, not a method option).

    At a batch drawn at budget N, the fixed-N projector's projector weights (from `teachers[N]`, an adapter folder of
    this benchmark) stand in for the student's for one extra no-grad forward on the same batch; the loss becomes
    `task loss + alpha * KL(teacher || student)` over the LM's next-token distributions at the answer positions
    (the task's LOGITS). The teacher modules live outside the PEFT model: never trained, never saved."""
    import copy

    import torch.nn.functional as F
    from safetensors.torch import load_file

    from adaptune.methods.flex_projector import FlexProjectorObjective
    from adaptune.methods.flex_projector.layer import _FlexLayerMixin
    from adaptune.methods.objective import LOGITS, Requirement, unwrap_model

    class DistillFromFixed(FlexProjectorObjective):
        @classmethod
        def requirements(cls, config):
            return [*super().requirements(config),
                    Requirement(LOGITS, None, "distillation compares the LM's answer logits")]

        def __init__(self, config, context) -> None:
            super().__init__(config, context)
            self._teachers: dict[int, torch.nn.Module] = {}

        def _layer(self, model):
            layers = [m for m in unwrap_model(model).modules() if isinstance(m, _FlexLayerMixin)]
            if len(layers) != 1:
                raise RuntimeError(f"distillation expects one TokenFLEX layer, found {len(layers)}")
            return layers[0]

        def _teacher(self, layer, budget: int) -> torch.nn.Module:
            if budget not in self._teachers:
                student = layer.flex_projector["default"]
                weights = load_file(str(teachers[budget] / "adapter_model.safetensors"))
                state = {k.split(".flex_projector.", 1)[1]: v for k, v in weights.items()}
                teacher = copy.deepcopy(student).requires_grad_(False)
                teacher.load_state_dict(state)  # strict: a teacher of another shape is an error
                self._teachers[budget] = teacher
            return self._teachers[budget]

        def loss(self, model, out, meta):
            loss, logs = super().loss(model, out, meta)
            budget = int(meta["budget"])
            layer = self._layer(model)
            student = layer.flex_projector["default"]
            layer.flex_projector["default"] = self._teacher(layer, budget)
            try:
                with torch.no_grad():
                    target = out.reference()
            finally:
                layer.flex_projector["default"] = student
            kd = F.kl_div(F.log_softmax(out.logits.float(), -1), F.log_softmax(target.float(), -1),
                          log_target=True, reduction="batchmean")
            return loss + alpha * kd, {**logs, "kd": float(kd)}

    return DistillFromFixed



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
        budgets, weights, mult, per_budget_norm = run_spec(name)
        steps = args.steps * mult
        params = {"budgets": budgets, "budget_weights": weights}
        if per_budget_norm:
            params["per_budget_norm"] = True
        eval_budgets = budgets if name.startswith("fixed") and args.fixed_eval == "own" else list(BUDGETS)
        data = {"name": f"evidence_flex-{name}", "model": {"source": args.source},
                "task": {"name": task_name, "params": {**common, "eval_budgets": eval_budgets}},
                "adapter": {"method": "flex_projector", "params": params},
                "training": {"max_steps": steps, "per_device_train_batch_size": args.batch_size,
                             "learning_rate": args.lr, "save_steps": max(steps, 1) * 10,
                             "logging_steps": max(1, steps // 10), "eval_limit": args.eval_n,
                             "seed": args.seed}}
    data["output"] = {"dir": str(Path(args.runs) / name), "overwrite": True}
    t0 = time.time()
    if name == "flex-distill":
        run_dir = run_distill(data, args)
    else:
        run_dir = run_recipe(load_recipe(data=data))
    summary = json.loads((Path(run_dir) / "eval.json").read_text())
    summary["run_dir"] = str(run_dir)
    summary["steps"] = data["training"]["max_steps"]
    if name == "flex-distill":
        summary["distill_alpha"] = args.distill_alpha
    summary["bench_seconds"] = round(time.time() - t0, 1)
    return summary


def run_distill(data: dict, args: argparse.Namespace) -> Path:
    """`flex-distill`: the flex recipe with the distillation objective in place of TokenFLEX's for this run only; the
    teachers are this seed's fixed4/9/16 adapters under --runs (run them first)."""
    from adaptune.config import load_recipe
    from adaptune.registry import METHODS
    from adaptune.train import run_recipe

    teachers = {b: Path(args.runs) / f"fixed{b}" / "adapter" for b in BUDGETS}
    missing = [str(p) for p in teachers.values() if not (p / "adapter_model.safetensors").is_file()]
    if missing:
        raise SystemExit(f"flex-distill needs the fixed projectors of this seed first (--configs fixed4,fixed9,"
                         f"fixed16 with the same --runs): missing {', '.join(missing)}")
    info = METHODS.get("flex_projector")
    original = info.objective
    object.__setattr__(info, "objective", distill_objective(teachers, args.distill_alpha))  # MethodInfo is frozen
    try:
        return run_recipe(load_recipe(data=data))
    finally:
        object.__setattr__(info, "objective", original)


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
    for name in [n for n in (*CONFIGS, *LEVERS) if any(r["projector"] == n for r in rows)]:
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


def lever_summary(files: list[str]) -> tuple[dict, str]:
    """The lever table over runs (seeds): per budget N, fixedN at N, then every flexible projector at N with its gap
    to fixedN on the same seed (same train and test questions, so the gap is paired), mean +- std over seeds.

    A seed may lack a lever or a fixed projector: each row lists the seeds it has, and a gap cell averages only the
    seeds that have both (their count in brackets when it is fewer than the row's)."""
    import statistics

    def ms(values: list[float]) -> dict | None:
        if not values:
            return None
        return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values), "values": values}

    results = [json.loads(Path(f).read_text()) for f in files]
    seeds = [r["meta"]["seed"] for r in results]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"lever summary: two result files share a seed ({seeds}); one file per seed")
    eval_n = {r["meta"]["eval_n"] for r in results}
    summary = {"files": files, "seeds": seeds, "eval_n": sorted(eval_n), "base_steps": sorted(
        {r["meta"]["steps"] for r in results}), "fixed": {}, "levers": {}}
    for b in BUDGETS:
        have = [r for r in results if f"fixed{b}" in r["runs"]]
        summary["fixed"][b] = ms([r["runs"][f"fixed{b}"][f"eval/b{b}/accuracy"] for r in have])
        if summary["fixed"][b] is not None:
            summary["fixed"][b]["seeds"] = [r["meta"]["seed"] for r in have]
    for n in ("flex", *LEVERS):
        have = [r for r in results if n in r["runs"]]
        if not have:
            continue
        entry = {"note": lever_note(n), "steps": have[0]["runs"][n].get("steps"),
                 "seeds": [r["meta"]["seed"] for r in have], "budgets": {}}
        for b in BUDGETS:
            acc = [r["runs"][n][f"eval/b{b}/accuracy"] for r in have]
            gap = [r["runs"][n][f"eval/b{b}/accuracy"] - r["runs"][f"fixed{b}"][f"eval/b{b}/accuracy"]
                   for r in have if f"fixed{b}" in r["runs"]]
            entry["budgets"][b] = {"accuracy": ms(acc), "gap_to_fixed": ms(gap)}
        summary["levers"][n] = entry

    def pm(d: dict | None, sign: bool = False, of: int | None = None) -> str:
        if d is None:
            return "-"
        text = f"{d['mean']:+.3f}" if sign else f"{d['mean']:.3f}"
        if d["n"] > 1:  # one seed has no spread to show
            text += f" +- {d['std']:.3f}"
        return text + (f" ({d['n']})" if of is not None and d["n"] < of else "")

    lines = [f"Flexible vs fixed per budget: {len(results)} seeds ({', '.join(map(str, seeds))}), "
             f"{'/'.join(map(str, sorted(eval_n)))} GlyphQA test questions per seed, base "
             f"{'/'.join(map(str, summary['base_steps']))} steps x batch {results[0]['meta']['batch_size']} "
             f"(each fixed projector and the 1x flex runs; 3x = three times that). Accuracy mean +- std over seeds; "
             "gap = flex - fixedN at budget N on the same seed (paired), mean +- std; (k) = over k seeds only.", "",
             "| projector | steps | seeds | " + " | ".join(f"@{b}" for b in BUDGETS) + " | "
             + " | ".join(f"gap @{b}" for b in BUDGETS) + " |", "|---|---|---|" + "---|" * (2 * len(BUDGETS))]
    fixed_seeds = sorted({s for d in summary["fixed"].values() if d for s in d["seeds"]})
    lines.append(f"| fixedN at its own budget | {summary['base_steps'][0]} | {','.join(map(str, fixed_seeds))} | "
                 + " | ".join(pm(summary["fixed"][b], of=len(fixed_seeds)) for b in BUDGETS) + " |"
                 + " - |" * len(BUDGETS))
    for n, entry in summary["levers"].items():
        k = len(entry["seeds"])
        lines.append(f"| {n} ({entry['note']}) | {entry['steps']} | {','.join(map(str, entry['seeds']))} | "
                     + " | ".join(pm(entry["budgets"][b]["accuracy"], of=k) for b in BUDGETS) + " | "
                     + " | ".join(pm(entry["budgets"][b]["gap_to_fixed"], sign=True, of=k) for b in BUDGETS) + " |")
    # sampling noise of one evaluation: what a single seed's cell cannot resolve
    n_q = min(eval_n)
    binomial = {b: (d["mean"] * (1 - d["mean"]) / n_q) ** 0.5 for b, d in summary["fixed"].items() if d}
    summary["binomial_std_fixed"] = binomial
    lines += ["", f"Sampling noise of one evaluation on {n_q} questions (binomial std at the fixed rows' accuracy): "
              + ", ".join(f"@{b} {v:.3f}" for b, v in binomial.items()) + "; a gap between two such evaluations "
              "has at most sqrt(2) times that (less when the two projectors err on the same questions)."]
    return summary, "\n".join(lines) + "\n"


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
                    help="comma list of base, flex, fixed4, fixed9, fixed16 and the levers "
                         f"{', '.join(LEVERS)}")
    ap.add_argument("--distill-alpha", type=float, default=1.0,
                    help="flex-distill: weight of the KL term to the fixed projector's answer logits")
    ap.add_argument("--fixed-eval", default="all", choices=("all", "own"),
                    help="evaluate each fixedN projector at every budget (all) or only at N (own: the lever runs)")
    ap.add_argument("--answer-format", default="answer_tag", choices=("answer_tag", "plain", "tagged"))
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "evidence_flex"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evidence_flex.json"))
    ap.add_argument("--aggregate", nargs="+", metavar="JSON",
                    help="only summarise earlier result files (mean +- std), print markdown and exit")
    ap.add_argument("--levers-aggregate", nargs="+", metavar="JSON",
                    help="only build the flexible-vs-fixed lever table from result files (one per seed, each with "
                         "fixed4/9/16), write it to --out (.json and .md) and exit")
    args = ap.parse_args()
    if args.aggregate:
        print(aggregate(args.aggregate))
        return
    if args.levers_aggregate:
        summary, md = lever_summary(args.levers_aggregate)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
        out.with_suffix(".md").write_text(md)
        print(md + f"wrote {out} and {out.with_suffix('.md')}")
        return
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in ("base", *CONFIGS, *LEVERS)]
    if unknown:
        ap.error(f"unknown --configs {unknown}; choose from base, {', '.join((*CONFIGS, *LEVERS))}")

    import adaptune  # noqa: F401  (methods and tasks registered)

    task_name, base_task = register_tasks(args.answer_format)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(args, k) for k in ("source", "steps", "batch_size", "lr", "eval_n", "num_train", "seed",
                                          "answer_format", "max_new_tokens")}
    if args.fixed_eval != "all":  # only then, so earlier result files (without the key) still merge
        meta["fixed_eval"] = args.fixed_eval
    result = {"meta": meta, "runs": {}, "rows": []}
    if out.exists():  # keep runs of other configs from an earlier invocation with the same settings
        old = json.loads(out.read_text())
        if old.get("meta") == meta:
            result = old
    for name in names:
        print(f"=== {name}", flush=True)
        summary = run_one(name, args, task_name, base_task)
        result["runs"][name] = summary
        order = ["base", *CONFIGS, *LEVERS]
        result["rows"] = [r for n in order if n in result["runs"] for r in rows_of(n, result["runs"][n])]
        out.write_text(json.dumps(result, indent=2))
        out.with_suffix(".md").write_text(markdown(result["rows"], meta))
        print(f"{name}: train {summary.get('train_seconds')} s, total {summary['bench_seconds']} s", flush=True)
        print(markdown(result["rows"], meta), flush=True)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
