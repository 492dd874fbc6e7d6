"""Run directories: what a run writes and how a finished, interrupted or fresh run is told apart.

    runs/<name>/
      config.yaml         the resolved recipe
      metrics.jsonl       one JSON record per log/eval event
      checkpoints/        trainer checkpoints; a checkpoint counts only once it holds COMPLETE
      adapter/            the PEFT adapter (written atomically)
      eval.json           final evaluation
      report.md, plots/   the human-readable report
      DONE                written last
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..config import Recipe, RecipeError

COMPLETE = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


class RunDirError(RuntimeError):
    """An output directory that cannot be used as asked (a finished run, say)."""


def run_dir_for(recipe: Recipe) -> Path:
    return Path(recipe.output.dir or Path("runs") / recipe.name)


def prepare_run_dir(recipe: Recipe) -> Path:
    """Create (or reuse, on resume) the run directory; refuse to clobber a finished or interrupted run."""
    run_dir = run_dir_for(recipe)
    if recipe.resume and recipe.output.overwrite:
        raise RecipeError(f"{recipe.source_file}: resume=true and output.overwrite=true contradict each other")
    if run_dir.exists() and any(run_dir.iterdir()):
        finished = (run_dir / "DONE").exists()
        if recipe.output.overwrite:
            shutil.rmtree(run_dir)
        elif finished and recipe.resume:
            (run_dir / "DONE").unlink()  # continuing a finished run (e.g. to more steps)
        elif finished:
            raise RunDirError(f"{run_dir} already holds a finished run; pass output.overwrite=true to replace it "
                              f"or set output.dir to another folder")
        elif not recipe.resume and latest_checkpoint(run_dir) is not None:
            raise RunDirError(f"{run_dir} holds an interrupted run; pass resume=true to continue it or "
                              f"output.overwrite=true to start over")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    return run_dir


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that finished saving (holds COMPLETE); half-written ones are ignored."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in folder.iterdir()
            if (m := _CKPT.match(p.name)) and (p / COMPLETE).exists()]
    return max(done)[1] if done else None


def discard_incomplete_checkpoints(run_dir: Path) -> list[Path]:
    """Move checkpoints without COMPLETE out of the trainer's way (kept under checkpoints/.incomplete)."""
    folder = Path(run_dir) / "checkpoints"
    moved = []
    for p in folder.iterdir() if folder.is_dir() else []:
        if _CKPT.match(p.name) and not (p / COMPLETE).exists():
            target = folder / ".incomplete" / p.name
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            p.rename(target)
            moved.append(target)
    return moved
