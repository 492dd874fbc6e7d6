"""Run adaptune recipes in one launch and record, per rank, what happened (helper of tests/test_scale_out.py).

    torchrun --nproc_per_node 2 tests/multiproc_run.py SPY_DIR RECIPE.yaml [RECIPE.yaml ...]
    python tests/multiproc_run.py SPY_DIR RECIPE.yaml ...              # one process

Each recipe runs through `adaptune.train.run_recipe`, as `adaptune train RECIPE` does (one launch for several
recipes saves the 2-process start-up and imports per recipe). Every rank writes `SPY_DIR/<recipe name>.rank<R>.json`
(outside the run directory): its rank, the world size it saw, the optimizer steps it took and every filesystem write
it made inside the run directory (a Python audit hook: open for writing, mkdir, rename/replace, remove, rmdir,
rmtree), so the test can tell that both ranks stepped and that only rank 0 wrote run files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WATCHED: list[str] = []
_SEEN: list[list[str]] = []


def _path(value: object) -> str | None:
    if isinstance(value, (str, bytes, os.PathLike)):
        path = os.fsdecode(value)
        return os.path.abspath(path)
    return None


def _audit(event: str, args: tuple) -> None:
    if not _WATCHED:
        return
    paths: list[str | None] = []
    if event == "open":
        path, mode, flags = (list(args) + [None, None, None])[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writes:
            paths = [_path(path)]
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate", "os.utime", "os.chmod"):
        paths = [_path(args[0])] if args else []
    elif event == "os.rename":
        paths = [_path(a) for a in args[:2]]
    for path in paths:
        if path and any(path == root or path.startswith(root + os.sep) for root in _WATCHED):
            _SEEN[-1].append(f"{event} {path}")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from adaptune.config import load_recipe
    from adaptune.train import lifecycle, run_recipe
    from adaptune.train.rundir import run_dir_for

    spy = Path(sys.argv[1])
    state = lifecycle.process_state()
    rank, world = state.process_index, state.num_processes
    steps: dict[str, int] = {}
    train = lifecycle.RunLifecycle.train

    def counting_train(self, trainer):  # the optimizer steps this rank's trainer took
        outcome = train(self, trainer)
        steps["steps"] = outcome.steps_run
        return outcome

    lifecycle.RunLifecycle.train = counting_train
    sys.addaudithook(_audit)
    for recipe_file in sys.argv[2:]:
        recipe = load_recipe(recipe_file)
        _WATCHED[:] = [os.path.abspath(run_dir_for(recipe))]
        _SEEN.append([])
        steps.clear()
        run_recipe(recipe)
        _WATCHED.clear()
        record = {"rank": rank, "world_size": world, "steps": steps.get("steps", 0), "writes": _SEEN[-1],
                  "backend": str(state.backend), "device": str(state.device)}
        spy.mkdir(parents=True, exist_ok=True)
        (spy / f"{recipe.name}.rank{rank}.json").write_text(json.dumps(record, indent=1))
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
