"""One accuracy-vs-visual-tokens table for every way of spending fewer visual tokens, on one held-out set.

What: for a base VLM and a list of budgets (visual tokens per image), evaluates side by side on the SAME held-out rows
and with the SAME prompt and answer protocol (`adaptune.budget.two_turn`, direct answers prefilled, scored by the rule
judge):
- `full`: the base model with every visual token (the reference);
- `downsample`: the image downsampled (the one BOX downsampler) to the size whose token count is the budget;
- every training-free token reducer (`adaptune.budget.reducers`: FasterVLM, DivPrune, ToMe ...) at each budget;
- learned budget adapters given as run directories or adapter folders: a TokenFLEX projector at each budget it was
  trained for (`flex_projector` trained on one budget is a fixed projector, evaluated at that budget only);
- resolution policies (GRPO run directories): the two-turn loop, whose visual tokens vary per question.
Writes `budgets.json`, `budgets.md` (the table) and `pareto.png` (accuracy vs mean visual tokens, Pareto front).

Why: the papers adaptune builds on compare learned projectors and training-free pruning at equal budgets; a number
from a different prompt, split or scorer is not comparable, so everything here goes through one loop and one scorer.

    adaptune eval budgets --model default --budgets 1,4,9,16 --adapters runs/flex,runs/fixed4 --policies runs/vt
    rows = budget_sweep(loaded, heldout, budgets=[1, 4, 9, 16], reducers=["divprune", "tome"])
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..budget.grid import BudgetError
from ..budget.placeholders import BudgetProcessor
from ..budget.reducers import REDUCERS, apply_reducer
from ..budget.resolution import downsampled_size, image_tokens
from ..budget.two_turn import answer_with_resolution_policy, summarize
from ..models import LoadedModel


def _score(results: list[Any], rows: Sequence[dict[str, Any]], judge: Any) -> list[bool]:
    from ..rl.inference import score_results

    return score_results(results, [str(r["question"]) for r in rows], [str(r["answer"]) for r in rows], judge)


def _cell(name: str, method: str, kind: str, budget: int | None, results: list[Any], correct: list[bool],
          rows: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    kinds = [str(r["kind"]) for r in rows] if rows and "kind" in rows[0] else None
    summary = summarize(results, correct, kinds)
    group = name.split("@")[0]
    cell: dict[str, Any] = {"name": name, "group": group, "method": method, "kind": kind, "budget": budget,
                            "accuracy": summary["all"]["accuracy"], "visual_tokens": summary["all"]["visual_tokens"],
                            "resize_rate": summary["all"]["resize_rate"], "n": summary["all"]["n"],
                            "seconds_per_answer": seconds / max(1, len(rows))}
    for group, values in summary.items():
        if group != "all":
            cell[f"accuracy/{group}"] = values["accuracy"]
    return cell


def downsample_factor_for(loaded: LoadedModel, size: tuple[int, int], budget: int) -> float | None:
    """The downsampling factor that makes an image of `size` cost exactly `budget` visual tokens, or None.

    First choice: the area ratio, sqrt(budget / full tokens) (0.5 for a quarter of the tokens, as VisionThink's
    half resolution); if the family's resize rules round that to another count, the nearest factor (in steps of
    1/64) that gives exactly `budget`.
    """
    width, height = size

    def cost(factor: float) -> int:
        return image_tokens(loaded.family, loaded.processor, downsampled_size(size, factor))

    first = (budget / cost(1.0)) ** 0.5
    if first <= 1.0 and cost(first) == budget:
        return first
    candidates = sorted((step / 64 for step in range(1, 65)), key=lambda f: (abs(f - first), -f))
    return next((f for f in candidates if cost(f) == budget), None)


def budget_sweep(loaded: LoadedModel, rows: Sequence[dict[str, Any]], budgets: Sequence[int],
                 reducers: Sequence[str] | None = None, adapters: Sequence[str | Path] = (),
                 policies: Sequence[str | Path] = (), judge: Any = None, batch_size: int = 32,
                 max_new_tokens: int = 16, policy_max_new_tokens: int = 64) -> list[dict[str, Any]]:
    """The comparison table as a list of cells (one per method x budget); see the module docstring."""
    reducers = list(REDUCERS.names() if reducers is None else reducers)
    model, processor = loaded.model, loaded.processor
    images = [r["image"] for r in rows]
    questions = [str(r["question"]) for r in rows]
    cells: list[dict[str, Any]] = []

    def run(name: str, method: str, kind: str, budget: int | None, the_model: torch.nn.Module, proc: Any,
            context: Any = None, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        with context or nullcontext():
            results = answer_with_resolution_policy(the_model, proc, images, questions, family=loaded.family,
                                                    batch_size=batch_size, **kwargs)
        seconds = time.perf_counter() - t0
        cells.append(_cell(name, method, kind, budget, results, _score(results, rows, judge), rows, seconds))

    plan: list[tuple[str, Any]] = [("full", None)]
    plan += [("downsample", b) for b in budgets]
    plan += [(r, b) for r in reducers for b in budgets]
    progress = tqdm(total=len(plan) + len(adapters) + len(policies), desc="budget sweep", unit="method")
    for method, budget in plan:
        progress.set_postfix_str(f"{method}@{budget}" if budget else method)
        if method == "full":
            run("full", "full", "reference", None, model, processor, always="full", max_new_tokens=max_new_tokens)
        elif method == "downsample":
            factor = downsample_factor_for(loaded, images[0].size, int(budget))
            if factor is None:
                warnings.warn(f"budget sweep: no downsampled size of a {images[0].size} image costs exactly {budget} "
                              "visual tokens on this family: no downsample cell", stacklevel=2)
            else:
                run(f"downsample@{budget}", "downsample", "resolution", int(budget), model, processor, always="low",
                    downsample_factor=factor, max_new_tokens=max_new_tokens)
        else:
            try:
                run(f"{method}@{budget}", method, "training-free", int(budget), model,
                    BudgetProcessor(processor, budget=int(budget)), apply_reducer(model, method), always="full",
                    max_new_tokens=max_new_tokens)
            except BudgetError as exc:
                warnings.warn(f"budget sweep: no {method}@{budget} cell: {exc}", stacklevel=2)
        progress.update()
    for path in adapters:
        with _adapter_on(model, path) as adapted:
            config = next(iter(adapted.peft_config.values()))
            method = str(getattr(config.peft_type, "value", config.peft_type)).lower()
            trained = [int(b) for b in getattr(config, "budgets", None) or []]
            chosen = [b for b in budgets if b in trained]
            if not chosen:
                raise BudgetError(f"budget sweep: adapter {path} ({method}) was trained at budgets {trained or 'none'}, "
                                  f"none of {list(budgets)}; pass budget adapters (TokenFLEX) under adapters= and "
                                  "resolution policies under policies=")
            kind = "learned" if len(trained) != 1 else "learned (fixed)"
            for budget in chosen:
                run(f"{Path(path).name}@{budget}", method, kind, budget, adapted,
                    BudgetProcessor(processor, budget=budget), always="full", max_new_tokens=max_new_tokens)
        progress.update()
    for path in policies:
        with _adapter_on(model, path) as adapted:
            run(Path(path).name, "resolution policy", "learned (policy)", None, adapted, processor,
                max_new_tokens=policy_max_new_tokens)
        progress.update()
    progress.close()
    return cells


@contextmanager
def _adapter_on(model: torch.nn.Module, path: str | Path) -> Iterator[Any]:
    """The adapter of a run directory (its adapter/) or an adapter folder, loaded onto `model` for the block, then
    unloaded so the next method sees the base model."""
    from ..adapters import load_adapter

    folder = Path(path) / "adapter" if (Path(path) / "adapter").is_dir() else Path(path)
    adapted = load_adapter(model, folder).eval()
    try:
        yield adapted
    finally:
        adapted.unload()


def write_sweep(cells: list[dict[str, Any]], out: Path, title: str = "Accuracy vs visual tokens") -> None:
    """budgets.json, budgets.md (a table, sorted by budget) and pareto.png into `out`."""
    from ..utils.markdown import markdown_table
    from ..utils.io import atomic_write_json, atomic_write_text
    from .plots import plot_pareto

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "budgets.json", {"results": cells})
    ordered = sorted(cells, key=lambda c: (c["visual_tokens"], c["name"]))
    cols = ["name", "kind", "budget", "visual_tokens", "accuracy"]
    cols += sorted({k for c in cells for k in c if k.startswith("accuracy/")}) + ["resize_rate", "seconds_per_answer",
                                                                                  "n"]
    atomic_write_text(out / "budgets.md", f"# {title}\n\n" + markdown_table(ordered, cols) + "\n![pareto](pareto.png)\n")
    plot_pareto(cells, out / "pareto.png", title=title)




# ------------------------------------------------------------------------------------------------ command line

OPTIONS = {
    "model": "default", "budgets": "1,4,9,16", "reducers": "all", "adapters": "", "policies": "",
    "dataset": "glyphqa", "num_images": "300", "fine_fraction": "0.3", "split": "test", "seed": "0",
    "batch_size": "32", "out": "runs/budgets",
}
"""`adaptune eval budgets --option value ...`: every option (as `--num-images`, ...) and its default."""


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def budgets_parser() -> "argparse.ArgumentParser":
    """`adaptune eval budgets [--model default] [--budgets 1,4,9,16] [--reducers all|none|a,b] [--adapters RUN,...]
    [--policies RUN,...] [--num-images 300] [--fine-fraction 0.3] [--out runs/budgets] ...`."""
    import argparse

    p = argparse.ArgumentParser(prog="adaptune eval budgets", description="Every budget method on one held-out set: "
                                "one accuracy-vs-visual-tokens table (budgets.md) and pareto.png.")
    for key, default in OPTIONS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, default=default, help=f"default: {default!r}")
    return p


def budgets_command(argv: list[str]) -> int:
    """`adaptune eval budgets --option value ...` (`budgets_parser`); takes no recipe, so no key=value."""
    from ..config import RecipeError, is_override
    from ..models import load_model
    from ..rl.data import DataParams, heldout_rows
    from ..utils.markdown import markdown_table

    stray = [a for a in argv if is_override(a)]
    if stray:
        key = stray[0].partition("=")[0]
        raise RecipeError(f"eval budgets: {stray[0]!r}: options are flags (--{key.replace('_', '-')} ...)"
                          + ("" if key in OPTIONS else f"; unknown option {key!r} (known: {', '.join(OPTIONS)})"))
    opts = vars(budgets_parser().parse_args(argv))
    try:
        budgets = [int(b) for b in _names(opts["budgets"])]
        num_images, seed, batch = int(opts["num_images"]), int(opts["seed"]), int(opts["batch_size"])
        fine_fraction = float(opts["fine_fraction"])
    except ValueError as exc:
        raise RecipeError(f"eval budgets: {exc}") from None
    if not budgets or min(budgets) < 1:
        raise RecipeError(f"eval budgets: budgets must be positive token counts, got {opts['budgets']!r}")
    reducers = (REDUCERS.names() if opts["reducers"] == "all" else [] if opts["reducers"] == "none"
                else _names(opts["reducers"]))
    unknown = [r for r in reducers if r not in REDUCERS]
    if unknown:
        raise RecipeError(f"eval budgets: unknown reducer(s) {unknown}; known: {', '.join(REDUCERS.names())}")
    for path in _names(opts["adapters"]) + _names(opts["policies"]):
        if not Path(path).exists():
            raise FileNotFoundError(f"eval budgets: {path} does not exist")
    loaded = load_model(opts["model"], seed=seed)
    rows = heldout_rows(DataParams(dataset=opts["dataset"], seed=seed), num_images, fine_fraction, opts["split"],
                        key="eval budgets --dataset")
    cells = budget_sweep(loaded, rows, budgets, reducers, _names(opts["adapters"]), _names(opts["policies"]),
                         batch_size=batch)
    out = Path(opts["out"])
    write_sweep(cells, out, title=f"Accuracy vs visual tokens: {opts['model']}, {len(rows)} held-out questions")
    print(markdown_table(sorted(cells, key=lambda c: (c["visual_tokens"], c["name"])),
                         ["name", "kind", "visual_tokens", "accuracy", "n"]))
    print(f"wrote {out / 'budgets.json'}, {out / 'budgets.md'}, {out / 'pareto.png'}")
    return 0


__all__ = ["OPTIONS", "budget_sweep", "budgets_command", "budgets_parser", "downsample_factor_for", "write_sweep"]
