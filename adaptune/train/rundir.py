"""Run directories: what a run writes and how a finished, interrupted or fresh run is told apart.

    runs/<name>/
      .adaptune-run       marker: written when adaptune creates the folder; only marked folders are reused or deleted
      .adaptune.lock      held (flock, pid inside) by the main process for the run's life; a second run is refused
      config.yaml         the resolved recipe
      metrics.jsonl       one JSON record per log/eval event (cut back to the resumed checkpoint's step on resume)
      checkpoints/        trainer checkpoints; a checkpoint counts only once it holds COMPLETE
      adapter/            the PEFT adapter (written atomically)
      eval.json           final evaluation
      report.md, plots/   the human-readable report
      DONE                written last

Rules (`prepare_run_dir`):

- a folder that is not empty and carries no marker is never used, deleted or written to (a legacy run folder, holding
  nothing but what a run writes and a config.yaml, is adopted);
- `output.overwrite=true` empties a marked run folder (never the working directory, one of its parents or home);
- a finished run (DONE) is refused unless overwrite, or resume (continue it to more steps);
- a run that wrote anything (metrics, checkpoints, adapter) and did not finish is refused unless overwrite or resume;
  resume continues from its newest COMPLETE checkpoint, or, when it has none (killed before its first complete
  checkpoint), starts over cleanly: metrics, half-written checkpoints and adapter of the dead attempt are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from ..config import Recipe, RecipeError, check_recipe_values
from ..utils.io import atomic_write_text, read_jsonl
from ..version import __version__

log = logging.getLogger("adaptune")

COMPLETE = "COMPLETE"
MARKER = ".adaptune-run"
LOCK = ".adaptune.lock"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
# what a run writes; a folder without the marker holding only these (and config.yaml) is an older adaptune's run
_RUN_ENTRIES = {"config.yaml", "metrics.jsonl", "checkpoints", "adapter", "eval.json", "report.md", "plots", "DONE",
                "ABORTED", MARKER, LOCK}
_ATTEMPT_ENTRIES = ("metrics.jsonl", "adapter", "eval.json", "DONE", "ABORTED")


class RunDirError(RuntimeError):
    """An output directory that cannot be used as asked (a finished run, a folder that is not a run's, a live lock)."""


def run_dir_for(recipe: Recipe) -> Path:
    return Path(recipe.output.dir or Path("runs") / recipe.name)


# ----------------------------------------------------------------------------------------------- lock


class RunLock:
    """An exclusive lock on a run directory held for the run's life by the main process.

    `flock` on `.adaptune.lock` (released by the kernel when the process dies, so a dead run's lock is stale by
    construction); the file holds pid and host for the error message. Without `fcntl`, a pid check decides.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self._acquire_by_pid()
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirError(f"{self.path.parent} is in use by another adaptune run ({_holder(self.path)}); "
                                  f"wait for it to end or choose another output.dir") from None
            except OSError:  # a filesystem without flock (some network mounts): decide by pid
                os.close(fd)
                return self._acquire_by_pid()
            try:  # the file we locked may have been unlinked by a run that released it meanwhile
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            self.fd = fd
            _HELD[_key(self.path.parent)] = self
            return None
        raise RunDirError(f"could not take the lock {self.path}")

    def _acquire_by_pid(self) -> None:
        if self.path.exists():
            pid = _pid_of(self.path)
            if pid and pid != os.getpid() and _alive(pid):
                raise RunDirError(f"{self.path.parent} is in use by another adaptune run ({_holder(self.path)})")
            if pid == os.getpid() and _key(self.path.parent) in _HELD:
                raise RunDirError(f"{self.path.parent} is in use by another run in this process")
        atomic_write_text(self.path, f"{os.getpid()} {socket.gethostname()}\n")
        _HELD[_key(self.path.parent)] = self

    def release(self) -> None:
        _HELD.pop(_key(self.path.parent), None)
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = None
        else:  # pid lock
            with contextlib.suppress(FileNotFoundError):
                if _pid_of(self.path) == os.getpid():
                    self.path.unlink()


_HELD: dict[str, RunLock] = {}


def _key(run_dir: Path) -> str:
    return str(Path(run_dir).resolve())


def _pid_of(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: Path) -> str:
    try:
        parts = path.read_text().split()
    except OSError:
        return "lock held"
    return f"pid {parts[0]} on {parts[1]}" if len(parts) >= 2 else "lock held"


def held_locks() -> set[str]:
    """Run directories this process holds locks on (resolved paths)."""
    return set(_HELD)


def release_run_lock(run_dir: Path | str) -> None:
    """Release this process's lock on `run_dir`, if it holds one."""
    lock = _HELD.get(_key(Path(run_dir)))
    if lock is not None:
        lock.release()


# ----------------------------------------------------------------------------------------------- prepare


def is_run_dir(path: Path) -> bool:
    """A folder adaptune created (marker), or a legacy run folder: only run entries, config.yaml among them."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    names = {p.name for p in path.iterdir()}
    foreign = {n for n in names if n not in _RUN_ENTRIES and not (n.startswith(".") and ".tmp" in n)}
    return "config.yaml" in names and not foreign


def _protected(run_dir: Path) -> bool:
    """The working directory, any of its parents, home, or the filesystem root."""
    target = run_dir.resolve()
    cwd = Path.cwd().resolve()
    return target == cwd or target in cwd.parents or target == Path.home().resolve() or target == Path(target.anchor)


def _write_marker(run_dir: Path, recipe: Recipe) -> None:
    atomic_write_text(run_dir / MARKER, json.dumps({"adaptune_version": __version__, "name": recipe.name,
                                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def _has_attempt(run_dir: Path) -> bool:
    """Whether an earlier attempt left output behind (metrics, checkpoints, adapter, evaluation)."""
    if any((run_dir / name).exists() for name in _ATTEMPT_ENTRIES):
        return True
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(True for _ in ckpts.iterdir())


def prepare_run_dir(recipe: Recipe) -> Path:
    """Create (or reuse, on resume) the run directory and lock it; refuse anything that could lose or mix data."""
    check_recipe_values(recipe)
    run_dir = run_dir_for(recipe)
    if recipe.resume and recipe.output.overwrite:
        raise RecipeError(f"{recipe.source_file}: resume=true and output.overwrite=true contradict each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output.dir {run_dir} is a file, not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not is_run_dir(run_dir):
        raise RunDirError(f"{run_dir} is not empty and is not an adaptune run directory (no {MARKER} marker); "
                          f"adaptune neither writes into nor deletes such a folder: set output.dir to a new or "
                          f"empty folder")
    if recipe.output.overwrite and run_dir.exists() and _protected(run_dir):
        raise RunDirError(f"output.overwrite=true refused for {run_dir}: it is the working directory, one of its "
                          f"parents or the home folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / MARKER).exists():
        _write_marker(run_dir, recipe)
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        _settle(recipe, run_dir)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    except BaseException:
        lock.release()
        raise
    return run_dir


def _settle(recipe: Recipe, run_dir: Path) -> None:
    """Under the lock: empty (overwrite), continue (resume) or refuse an earlier attempt in `run_dir`."""
    if recipe.output.overwrite:
        for entry in run_dir.iterdir():
            if entry.name in (LOCK, MARKER):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return
    if not _has_attempt(run_dir):
        return
    finished = (run_dir / "DONE").exists()
    checkpoint = latest_checkpoint(run_dir)
    if finished and recipe.resume:
        (run_dir / "DONE").unlink()  # continuing a finished run (e.g. to more steps)
    elif finished:
        raise RunDirError(f"{run_dir} already holds a finished run; pass output.overwrite=true to replace it "
                          f"or set output.dir to another folder")
    elif recipe.resume and checkpoint is None:
        log.warning("%s: interrupted before its first complete checkpoint; resume=true starts it over", run_dir)
        restart_clean(run_dir)
    elif not recipe.resume and checkpoint is not None:
        raise RunDirError(f"{run_dir} holds an interrupted run; pass resume=true to continue it or "
                          f"output.overwrite=true to start over")
    elif not recipe.resume:
        raise RunDirError(f"{run_dir} holds an interrupted run with no complete checkpoint (killed or failed "
                          f"early); pass output.overwrite=true (or resume=true) to start it over, or set output.dir "
                          f"to another folder")


def restart_clean(run_dir: Path) -> None:
    """Remove what a dead attempt without any complete checkpoint left (metrics, checkpoints, adapter, results)."""
    for name in ("metrics.jsonl", "eval.json", "report.md", "DONE", "ABORTED"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
    for name in ("checkpoints", "adapter", "plots"):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop metrics.jsonl records logged after `step` (the resumed checkpoint's); returns how many were dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    records = read_jsonl(path)
    keep = [r for r in records if not isinstance(r.get("step"), int) or r["step"] <= step]
    dropped = len(records) - len(keep)
    text = "".join(json.dumps(r, default=str) + "\n" for r in keep)
    if dropped or text != path.read_text():  # also drops a torn last line
        atomic_write_text(path, text)
    return dropped


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
