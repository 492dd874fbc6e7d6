"""`adaptune eval`: accuracy against visual tokens, for one run or several side by side.

    adaptune eval runs/a runs/b split=test limit=200 out=runs/compare
    adaptune eval budgets model=default budgets=1,4,9,16 adapters=runs/flex policies=runs/policy

The second form (`adaptune.eval.budgets`) puts every budget method (downsampling, the training-free token reducers,
TokenFLEX and fixed projectors, resolution policies) on one accuracy-vs-visual-tokens table on one held-out set.

Each target is a run directory (its `config.yaml` says how to rebuild model and task; its `adapter/` is loaded with
`PeftModel.from_pretrained`). Writes `eval.json`, `eval.md` and `pareto.png` (accuracy vs mean visual tokens, the
Pareto front drawn) into `out` (default: the single run's directory, or `runs/compare`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..config import RecipeError, load_recipe
from ..utils.markdown import markdown_table
from ..utils.io import atomic_write_json, atomic_write_text
from .plots import pareto_front, plot_pareto


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    known = {"split", "limit", "out", "resolution", "recipe"}
    parsed = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in known:
            raise RecipeError(f"eval: unknown option {key!r} (known: {', '.join(sorted(known))})")
        parsed[key] = value
    return parsed


def evaluate_run(run_dir: Path, split: str = "test", limit: int | None = None,
                 task_overrides: dict[str, Any] | None = None, recipe_path: str | None = None) -> dict[str, Any]:
    """Rebuild a run's model, adapter and task from its folder and evaluate on `split`.

    `run_dir` may also be a bare adapter folder; then `recipe_path` says which model and task to evaluate on.
    """
    from ..adapters import load_adapter
    from ..train.runner import load_for_recipe, make_task

    run_dir = Path(run_dir)
    adapter_dir = run_dir / "adapter"
    if (run_dir / "adapter_config.json").exists():  # a bare adapter folder
        if recipe_path is None:
            raise RecipeError(f"{run_dir} is an adapter folder: pass recipe=PATH to say which model and task to use")
        recipe, adapter_dir = load_recipe(recipe_path), run_dir
    elif (run_dir / "config.yaml").exists():
        recipe = load_recipe(recipe_path or run_dir / "config.yaml")
    else:
        raise FileNotFoundError(f"{run_dir} is neither a run directory (config.yaml) nor an adapter folder")
    if not adapter_dir.exists() and recipe.adapter.method != "none":
        from ..adapters import AdapterLoadError

        state = "it did not finish (no DONE)" if not (run_dir / "DONE").exists() else "it was removed"
        raise AdapterLoadError(f"{run_dir} has no adapter/ ({state}): evaluating it would score the base model "
                               f"under the name of method {recipe.adapter.method!r}")
    recipe.task.params.update(task_overrides or {})
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
                "n": policy.get("n"), **result["headline"]}
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


def write_comparison(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "eval.json", {"results": rows})
    cols = ["name", "method", "accuracy", "visual_tokens", "latency_s", "n"]
    cols += sorted({k for r in rows for k in r if k.startswith("accuracy/")})
    atomic_write_text(out / "eval.md", "# Evaluation\n\n" + markdown_table(rows, cols) + "\n![pareto](pareto.png)\n")
    plot_pareto(rows, out / "pareto.png")


def evaluate_command(targets: list[str], overrides: list[str]) -> int:
    if targets == ["budgets"] and not (Path("budgets") / "config.yaml").exists():
        from .budgets import budgets_command

        return budgets_command(overrides)
    opts = _parse_overrides(overrides)
    limit = int(opts["limit"]) if "limit" in opts else None
    task_overrides = {"resolution": opts["resolution"]} if "resolution" in opts else None
    rows = [evaluate_run(Path(t), opts.get("split", "test"), limit, task_overrides, opts.get("recipe"))
            for t in targets]
    out = Path(opts.get("out") or (targets[0] if len(targets) == 1 else "runs/compare"))
    write_comparison(rows, out)
    print(markdown_table(rows, ["name", "method", "accuracy", "visual_tokens", "n"]))
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'pareto.png'}")
    return 0
