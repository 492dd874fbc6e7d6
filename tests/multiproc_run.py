"""Run adaptune recipes in one launch and record, per rank, what happened (helper of tests/test_scale_out.py).

    torchrun --nproc_per_node 2 tests/multiproc_run.py SPY_DIR RECIPE.yaml [RECIPE.yaml ...]
    python tests/multiproc_run.py SPY_DIR RECIPE.yaml ...              # one process
    accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no \
        tests/multiproc_run.py --cpu-fsdp SPY_DIR RECIPE-fsdp.yaml RECIPE-ddp.yaml   # FSDP 2 on CPU (see below)

Each recipe runs through `adaptune.train.run_recipe`, as `adaptune train RECIPE` does (one launch for several
recipes saves the 2-process start-up and imports per recipe). Every rank writes `SPY_DIR/<recipe name>.rank<R>.json`
(outside the run directory): its rank, the world size it saw, the optimizer steps it took and every filesystem write
it made inside the run directory (a Python audit hook: open for writing, mkdir, rename/replace, remove, rmdir,
rmtree), so the test can tell that both ranks stepped and that only rank 0 wrote run files; and how the trainer
distributed the model (accelerate's distributed type, whether the wrapped model was sharded, its DTensor parameters).

`--cpu-fsdp` (test only): accelerate selects FSDP (ACCELERATE_USE_FSDP, which `accelerate launch` sets from an FSDP
config) only on accelerator devices: `AcceleratorState.__init__` takes its FSDP branch for MULTI_GPU, MULTI_XPU, ...
but not MULTI_CPU, which then runs DDP. With the flag, while a recipe whose name ends in "-fsdp" runs, a CPU state
reports the distributed type MULTI_GPU (the device stays the CPU, the backend gloo), so accelerate's own FSDP 2
code runs as on GPUs: `fsdp2_prepare_model` (fully_shard of the blocks, the input embeddings, the root), the
Trainer's FSDP paths (sharded checkpoints), and the gather in `get_state_dict` (get_model_state_dict, full state dict
offloaded to CPU). The other recipes of the launch run DDP.
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


_FSDP_NOW: list[bool] = [False]


def _allow_fsdp_on_cpu() -> None:
    """While `_FSDP_NOW[0]`, a CPU state built with ACCELERATE_USE_FSDP=true reports MULTI_GPU (module docstring)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    init = PartialState.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if (_FSDP_NOW[0] and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
                and self.distributed_type in (DistributedType.MULTI_CPU, DistributedType.NO)):
            self.distributed_type = DistributedType.MULTI_GPU

    PartialState.__init__ = __init__


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from torch.distributed.tensor import DTensor

    from adaptune.config import load_recipe
    from adaptune.train import lifecycle, run_recipe
    from adaptune.train.rundir import run_dir_for

    args = sys.argv[1:]
    cpu_fsdp = args[0] == "--cpu-fsdp"
    if cpu_fsdp:
        args = args[1:]
        _allow_fsdp_on_cpu()
    spy = Path(args[0])
    state = lifecycle.process_state()
    rank, world = state.process_index, state.num_processes
    steps: dict[str, object] = {}
    train, save_adapter = lifecycle.RunLifecycle.train, lifecycle.RunLifecycle.save_adapter

    def counting_train(self, trainer):  # the optimizer steps this rank's trainer took
        outcome = train(self, trainer)
        steps["steps"] = outcome.steps_run
        return outcome

    def observed_save(self, trainer_or_model):  # how the trainer distributed the model
        wrapped = getattr(trainer_or_model, "model_wrapped", None)
        if wrapped is not None:
            steps["distributed_type"] = str(trainer_or_model.accelerator.distributed_type)
            steps["sharded"] = lifecycle.is_sharded(wrapped)
            steps["dtensors"] = sum(isinstance(p, DTensor) for p in wrapped.parameters())
        return save_adapter(self, trainer_or_model)

    lifecycle.RunLifecycle.train = counting_train
    lifecycle.RunLifecycle.save_adapter = observed_save
    sys.addaudithook(_audit)
    for recipe_file in args[1:]:
        recipe = load_recipe(recipe_file)
        _WATCHED[:] = [os.path.abspath(run_dir_for(recipe))]
        _SEEN.append([])
        steps.clear()
        _FSDP_NOW[0] = cpu_fsdp and recipe.name.endswith("-fsdp")
        run_recipe(recipe)
        _WATCHED.clear()
        record = {"rank": rank, "world_size": world, "steps": steps.get("steps", 0), "writes": _SEEN[-1],
                  "backend": str(state.backend), "device": str(state.device),
                  **{k: v for k, v in steps.items() if k != "steps"}}
        spy.mkdir(parents=True, exist_ok=True)
        (spy / f"{recipe.name}.rank{rank}.json").write_text(json.dumps(record, indent=1))
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
