"""The `adaptune` command line.

    adaptune train RECIPE.yaml [key=value ...]     fine-tune an adapter or train a resolution policy
    adaptune eval RUN_DIR|ADAPTER [key=value ...] [--split S --limit N --out DIR]   evaluate runs or adapter folders
    adaptune eval budgets [--model M --budgets 1,4,9,16 ...]   every budget method on one tokens-vs-accuracy table
    adaptune push RUN REPO_ID [--private]          upload a run's adapter + model card to the Hugging Face Hub
    adaptune export RUN OUT                        merge a LoRA / mask-tuning adapter into a plain model folder
    adaptune info [--json]                         families, methods, rewards, judges, tasks, sources, kinds
    adaptune demo                                  the quickstart (what `make demo` runs)
    adaptune judge-eval JUDGE [--smollm2 --limit N]  a judge's agreement, parse rate and latency on labelled rows

Errors adaptune expects (a bad recipe, model, adapter, input, run directory, budget, a diverged run) and OS errors
(read-only folder, disk full, a path that is a file) end as one line on stderr and exit code 2; `--debug` (or
ADAPTUNE_DEBUG=1) shows the traceback instead.

One grammar for every command: options are `--flags`; `key=value` arguments are recipe overrides (dotted keys,
`training.max_steps=10`). An argument is an override when the text before its first `=` is a dotted key and it is
not an existing file or folder (`adaptune.config.is_override`), so a path such as `runs/lr=1e-3` stays a path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any


def _registries() -> dict[str, Any]:
    import adaptune  # noqa: F401  (registers everything)
    from adaptune.registry import FAMILIES, JUDGES, METHODS, REDUCERS, REWARDS, RUN_KINDS, SOURCES, TASKS

    def first_line(obj: Any) -> str:
        return (getattr(obj, "__doc__", "") or "").strip().split("\n")[0]

    return {
        "model_families": {n: s.to_dict() for n, s in FAMILIES.items()},
        "adapter_methods": {"lora": {"families": "all", "description": "PEFT LoRA (built in)"},
                            **{n: {"families": list(i.families), "description": i.description,
                                   "mergeable": i.mergeable} for n, i in METHODS.items()}},
        "rewards": {n: (getattr(r, "__doc__", "") or "").strip().split("\n")[0] for n, r in REWARDS.items()},
        "judges": {n: (getattr(j, "__doc__", "") or "").strip().split("\n")[0] for n, j in JUDGES.items()},
        "tasks": {n: getattr(t, "description", "") for n, t in TASKS.items()},
        "token_reducers": {n: {"families": list(r.families), "description": r.description}
                           for n, r in REDUCERS.items()},
        "model_sources": {n: first_line(r) for n, r in SOURCES.items()},
        "recipe_kinds": {n: first_line(r) for n, r in RUN_KINDS.items()},
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = _registries()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for section, items in info.items():
        print(f"{section}:")
        for name, value in items.items():
            desc = value.get("description", "") if isinstance(value, dict) else value
            print(f"  {name:<16} {desc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from adaptune.config import RecipeError, load_recipe, split_overrides
    from adaptune.train import run_recipe

    paths, overrides = split_overrides([args.recipe, *args.overrides])
    if len(paths) != 1:
        raise RecipeError(f"train: one recipe file, then key=value overrides; got {paths or 'no recipe'}")
    recipe = load_recipe(paths[0], overrides)
    run_dir = run_recipe(recipe)
    print(f"run finished: {run_dir}\n  report: {run_dir / 'report.md'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from adaptune.demo import run_demo

    run_demo(args.out)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from adaptune.eval import evaluate_command

    return evaluate_command(args.args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adaptune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also: ADAPTUNE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run a training recipe")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. training.max_steps=10")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate run directories or adapter folders", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER, help="`adaptune eval --help`, `adaptune eval budgets --help`")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("demo", help="the quickstart on the embedded default (what `make demo` runs)")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("info", help="list families, methods, rewards, judges, tasks, model sources and recipe kinds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    argv = sys.argv[1:] if argv is None else list(argv)
    _add_extra_commands(sub, _command_name(argv))
    if _command_name(argv) == "eval":  # `adaptune eval` parses its own arguments (two forms: runs, budgets)
        split = argv.index("eval") + 1
        args = parser.parse_args(argv[:split])
        args.args = argv[split:]
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    debug = args.debug or os.environ.get("ADAPTUNE_DEBUG", "").strip() not in ("", "0", "false", "no")
    try:
        return args.func(args)
    except Exception as exc:
        if debug or not isinstance(exc, _expected_errors()):
            raise
        message = " ".join(str(exc).split()) or exc.__class__.__name__
        name = exc.__class__.__name__
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and name not in message:
            message = f"{name}: {message}"
        print(f"adaptune {args.command}: error: {message} (--debug for the traceback)", file=sys.stderr)
        return 2


def _expected_errors() -> tuple[type[BaseException], ...]:
    """adaptune's own error classes (those whose modules are already imported) and OSError."""
    found: list[type[BaseException]] = [OSError]
    for module, names in (("adaptune.config", ("RecipeError",)),
                          ("adaptune.models", ("ModelLoadError", "UnsupportedModelError")),
                          ("adaptune.adapters", ("AdapterLoadError", "AdapterSaveError")),
                          ("adaptune.share", ("ShareError",)),
                          ("adaptune.data.validate", ("InputError",)),
                          ("adaptune.budget.grid", ("BudgetError",)),
                          ("adaptune.train.rundir", ("RunDirError",)),
                          ("adaptune.train.lifecycle", ("TrainingDivergedError",)),
                          ("adaptune.rl.rewards", ("DroppedGroupsError",))):
        mod = sys.modules.get(module)  # an error of a module never imported cannot have been raised
        if mod is None:
            continue
        found += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(found)


# Subcommands contributed by other modules: command -> (module with `add_cli(subparsers)`, one-line help). Only the
# module of the command being run is imported, so `adaptune --help` and the built-in commands stay fast.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "default": ("adaptune.default", "build or verify the embedded default VLM"),
    "label-resolution": ("adaptune.rl.labeling", "label samples low-res-suffices / needs-high-res / drop"),
    "push": ("adaptune.share", "upload a run's adapter, model card, eval table and plots to the Hugging Face Hub"),
    "export": ("adaptune.share", "merge a run's adapter (LoRA, mask tuning) into a plain transformers folder"),
    "judge-eval": ("adaptune.rl.judges.quality", "agreement, parse rate and latency of a judge on labelled rows"),
}


def _command_name(argv: list[str]) -> str | None:
    """The subcommand `argv` asks for (its first argument that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def _add_extra_commands(sub: Any, command: str | None) -> None:
    """Register the contributed subcommands: the real parser for `command`, a placeholder (name + help) for the
    others, whose modules are not imported."""
    wanted = EXTRA_COMMANDS[command][0] if command in EXTRA_COMMANDS else None
    if wanted is not None:  # its add_cli registers every command of that module
        __import__(wanted, fromlist=["add_cli"]).add_cli(sub)
    for name, (module, help_text) in EXTRA_COMMANDS.items():
        if module != wanted:
            sub.add_parser(name, help=help_text, add_help=False)


if __name__ == "__main__":
    sys.exit(main())
