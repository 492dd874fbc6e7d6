"""`adaptune eval`: accuracy against visual tokens, for one run or several side by side.

    adaptune eval runs/a runs/b --split test --limit 200 --out runs/compare
    adaptune eval runs/a task.params.resolution=half           # key=value: overrides of the run's recipe
    adaptune eval budgets --model default --budgets 1,4,9,16 --adapters runs/flex --policies runs/policy

One grammar, the same as `adaptune train`: options are `--flags`; `key=value` arguments are overrides of the
recipe (the run's `config.yaml`). An argument is an override when the text before its first `=` is a dotted key and
it is not an existing path (`adaptune.config.is_override`); anything else is a target.

The second form (`adaptune.eval.budgets`) puts every budget method (downsampling, the training-free token reducers,
TokenFLEX and fixed projectors, resolution policies) on one accuracy-vs-visual-tokens table on one held-out set.

Each target is a run directory (its `config.yaml` says how to rebuild model and task; its `adapter/` is loaded with
`PeftModel.from_pretrained`). Writes `eval.json`, `eval.md` and `pareto.png` (accuracy vs mean visual tokens, the
Pareto front drawn) into `--out` (default: `RUN/evaluations/<time>/` for a single run, else `runs/compare`), never
into a run directory itself: a run's own `eval.json` is its training summary.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ..config import RecipeError, load_recipe, split_overrides
from ..utils.markdown import markdown_table
from ..utils.io import atomic_write_json, atomic_write_text
from .plots import pareto_front, plot_pareto


OPTIONS = ("split", "limit", "out", "recipe", "resolution", "dataset")  # `key=value` options of old: now flags


def eval_parser() -> argparse.ArgumentParser:
    """The parser of `adaptune eval RUN ...` (the `budgets` form has its own, `adaptune.eval.budgets`)."""
    p = argparse.ArgumentParser(prog="adaptune eval", description="Evaluate run directories or adapter folders; "
                                "`adaptune eval budgets --help` for the budget sweep.")
    p.add_argument("targets", nargs="+", help="run directories or adapter folders, then key=value overrides of "
                   "their recipes (e.g. task.params.resolution=half)")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples")
    p.add_argument("--out", default=None, help="folder for eval.json, eval.md, pareto.png (default: "
                   "RUN/evaluations/<time>/ for one run, runs/compare for several); never a run directory")
    p.add_argument("--recipe", default=None, help="the recipe of a bare adapter folder (model and task)")
    p.add_argument("--dataset", default=None, help="a dataset spec replacing the recipe's evaluation data")
    return p


def evaluate_run(run_dir: Path, split: str = "test", limit: int | None = None,
                 task_overrides: dict[str, Any] | None = None, recipe_path: str | None = None,
                 dataset: Any = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Rebuild a run's model, adapter and task from its folder and evaluate on `split`.

    `run_dir` may also be a bare adapter folder; then `recipe_path` says which model and task to evaluate on.
    `dataset` (a dataset spec, docs/datasets.md) replaces the recipe's evaluation data: `task.params.dataset` of an
    adapter run, `grpo.eval.dataset` of a GRPO run (whose result then has one `comparison` row per method).
    `overrides`: `key=value` overrides of the recipe (as `adaptune train` takes them).
    """
    from ..adapters import load_adapter
    from ..train.runner import load_for_recipe, make_task

    run_dir = Path(run_dir)
    adapter_dir = run_dir / "adapter"
    if (run_dir / "adapter_config.json").exists():  # a bare adapter folder
        if recipe_path is None:
            raise RecipeError(f"{run_dir} is an adapter folder: pass --recipe PATH to say which model and task to "
                              f"use")
        recipe, adapter_dir = load_recipe(recipe_path, overrides), run_dir
    elif (run_dir / "config.yaml").exists():
        recipe = load_recipe(recipe_path or run_dir / "config.yaml", overrides)
    else:
        raise FileNotFoundError(f"{run_dir} is neither a run directory (config.yaml) nor an adapter folder")
    if not adapter_dir.exists() and recipe.adapter.method != "none":
        from ..adapters import AdapterLoadError

        state = "it did not finish (no DONE)" if not (run_dir / "DONE").exists() else "it was removed"
        raise AdapterLoadError(f"{run_dir} has no adapter/ ({state}): evaluating it would score the base model "
                               f"under the name of method {recipe.adapter.method!r}")
    recipe.task.params.update(task_overrides or {})
    if dataset is not None:
        if recipe.kind == "grpo":
            recipe.grpo.setdefault("eval", {})["dataset"] = dataset
        else:
            recipe.task.params["dataset"] = dataset
    loaded = load_for_recipe(recipe)
    model = loaded.model
    if adapter_dir.exists():
        model = load_adapter(model, adapter_dir).eval()
    if recipe.kind == "grpo":  # a resolution policy: the two-turn loop against its baselines
        from ..rl.report import evaluate_policy
        from ..rl.sections import parse_grpo_section

        plan = parse_grpo_section(recipe)
        if limit:
            plan.eval.num_images = limit
        result = evaluate_policy(model, loaded, plan)
        policy = result["methods"].get("policy", {}).get("all", {})
        return {"name": recipe.name, "method": recipe.adapter.method, "accuracy": policy.get("accuracy"),
                "visual_tokens": policy.get("visual_tokens"), "resize_rate": policy.get("resize_rate"),
                "n": policy.get("n"), **result["headline"], "comparison": policy_rows(recipe.name, result)}
    task = make_task(recipe, loaded)
    from ..train.reduction import apply_budget_section

    apply_budget_section(recipe, model, task)  # the run's token reducer, if its recipe has one
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = task.evaluate(model, split, limit)
    metrics["eval_seconds"] = time.perf_counter() - t0
    metrics["name"] = recipe.name
    metrics["method"] = recipe.adapter.method
    return metrics


def policy_rows(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method of a resolution policy's held-out comparison (policy, low, full, oracle, ...), with its
    per-kind accuracy: the table and the Pareto points of `adaptune eval` on a GRPO run."""
    rows = []
    for method, cells in result.get("methods", {}).items():
        every = cells["all"]
        row = {"name": f"{name}/{method}", "method": method, "accuracy": every["accuracy"],
               "visual_tokens": every["visual_tokens"], "resize_rate": every.get("resize_rate"), "n": every.get("n")}
        row.update({f"accuracy/{kind}": c["accuracy"] for kind, c in cells.items() if kind != "all"})
        rows.append(row)
    return rows


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows `adaptune eval` tabulates and plots: a GRPO run contributes one row per compared method."""
    return [row for r in results for row in (r.get("comparison") or [r])]


def write_comparison(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "eval.json", {"results": rows})
    cols = ["name", "method", "accuracy", "visual_tokens", "latency_s", "n"]
    cols += sorted({k for r in rows for k in r if k.startswith("accuracy/")})
    atomic_write_text(out / "eval.md", "# Evaluation\n\n" + markdown_table(rows, cols) + "\n![pareto](pareto.png)\n")
    plot_pareto(rows, out / "pareto.png")


def evaluate_command(argv: list[str]) -> int:
    """`adaptune eval ARGS`: the budget sweep for `budgets ...`, else runs / adapter folders."""
    if argv[:1] == ["budgets"] and not (Path("budgets") / "config.yaml").exists():
        from .budgets import budgets_command

        return budgets_command(argv[1:])
    args = eval_parser().parse_intermixed_args(argv)  # flags before, between or after the targets
    targets, overrides = split_overrides(args.targets)
    old = [o for o in overrides if o.partition("=")[0] in OPTIONS]
    if old:
        key = old[0].partition("=")[0]
        hint = "task.params.resolution=..." if key == "resolution" else f"--{key} ..."
        raise RecipeError(f"eval: {old[0]!r}: options are flags ({hint}); key=value arguments override the run's "
                          f"recipe")
    if not targets:
        raise RecipeError("eval: no run directory or adapter folder given")
    out = Path(args.out) if args.out else (
        Path(targets[0]) / "evaluations" / time.strftime("%Y%m%d-%H%M%S")
        if len(targets) == 1 and (Path(targets[0]) / "config.yaml").exists() else Path("runs/compare"))
    if (out / "config.yaml").exists() or (out / "DONE").exists():
        raise RecipeError(f"eval: --out {out} is a run directory; its eval.json is the training summary, so "
                          f"`adaptune eval` writes elsewhere (omit --out: {out / 'evaluations'}/<time>/)")
    rows = table_rows([evaluate_run(Path(t), args.split, args.limit, None, args.recipe, args.dataset, overrides)
                       for t in targets])
    write_comparison(rows, out)
    print(markdown_table(rows, ["name", "method", "accuracy", "visual_tokens", "n"]))
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'pareto.png'}")
    return 0
