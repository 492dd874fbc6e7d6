"""One run directory from the first line to DONE, shared by every recipe kind.

What: the steps every training run takes around its trainer: prepare the run directory (the main process creates or
checks it and holds its lock until `finish`, the other processes of an `accelerate launch` wait and join), write
`config.yaml`, set the seed, attach the callback that appends `metrics.jsonl` and marks finished checkpoints COMPLETE
(plus optional mid-run evaluation, extra logged scalars and a wall-time limit) and the guard that stops the run at the
first non-finite loss or gradient norm (`TrainingDivergedError`, nothing saved), resume from the newest COMPLETE
checkpoint (metrics logged after it are dropped), save the adapter (weights gathered from every process through the
trainer's accelerator, so FSDP / ZeRO-3 shards are whole; non-finite weights refused), then write the final metrics
record, `eval.json`, `report.md` and `DONE`. After training, `trainer_state.json` (the Trainer's log history and
state, as `Trainer.save_model` writes it) sits at the top of the run directory.

Processes: only the main process creates, writes or deletes anything in the run directory (the other ranks write
nothing there but the trainer's own per-rank RNG state inside checkpoints, `rng_state_<rank>.pth`, which resuming them
needs). Tasks, objectives and evaluation get the unwrapped model (`adaptune.methods.objective.unwrap_model`;
`forward_through` runs the training loss inside the DDP / FSDP wrapper's forward). Mid-run evaluation runs on the
main process only when the model is replicated (DDP, one process); a sharded model (FSDP, ZeRO-3) is evaluated on
every process (each one gathers shards; the main one writes), so no rank waits on a collective the others skip.

Why: the adapter runner (`adaptune.train.runner`) and the GRPO run (`adaptune.rl.run`) write the same folder format
(`adaptune.train.rundir`); with one lifecycle they cannot drift apart (resume rules, markers, refusals), and a new
recipe kind gets all of it by calling five methods.

How:

    life = RunLifecycle.begin(recipe)            # refuses finished / interrupted runs, as rundir says
    trainer = SomeTrainer(..., args=...(output_dir=life.checkpoints))
    life.attach(trainer, evaluate=fn, eval_steps=50, log_extras=stats.snapshot, time_limit_minutes=None)
    outcome = life.train(trainer)                # seconds, steps_run, resumed_from
    model = life.save_adapter(trainer)           # EVERY process (gathers sharded weights); main writes adapter/
    if not life.is_main_process:
        return life.run_dir
    return life.finish("Run x", summary, step=trainer.state.global_step, final={...}, sections=[...])
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, set_seed

from ..adapters import save_adapter
from ..config import Recipe, recipe_to_yaml
from ..utils.io import append_jsonl, atomic_write_json, atomic_write_text
from .report import write_report
from .rundir import (COMPLETE, discard_incomplete_checkpoints, latest_checkpoint, prepare_run_dir, release_run_lock,
                     run_dir_for, truncate_metrics)

log = logging.getLogger("adaptune")


class RunCallback(TrainerCallback):
    """Appends logs to metrics.jsonl, marks finished checkpoints COMPLETE, evaluates every `eval_steps`.

    `evaluate(model) -> metrics` runs on the main process every `eval_steps` steps (0: never); `log_extras() -> dict`
    is merged into every training log record that carries a loss (the GRPO environment's counters, say).
    """

    def __init__(self, run_dir: Path, evaluate: Callable[[Any], dict[str, Any]] | None = None, eval_steps: int = 0,
                 log_extras: Callable[[], dict[str, Any]] | None = None) -> None:
        self.run_dir, self.evaluate, self.eval_steps, self.log_extras = Path(run_dir), evaluate, eval_steps, log_extras

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.log_extras is not None and "loss" in logs:
            logs.update(self.log_extras())
        if state.is_world_process_zero and logs:
            append_jsonl(self.run_dir / "metrics.jsonl", {"event": "train", "step": state.global_step, **logs})

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                atomic_write_text(ckpt / COMPLETE, f"{state.global_step}\n")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from ..methods.objective import unwrap_model

        if not (self.evaluate is not None and self.eval_steps and state.global_step % self.eval_steps == 0):
            return
        if not (state.is_world_process_zero or is_sharded(model)):
            return
        inner = unwrap_model(model)
        was_training = inner.training
        with gathered(model):
            metrics = self.evaluate(inner)
        inner.train(was_training)
        if state.is_world_process_zero:
            append_jsonl(self.run_dir / "metrics.jsonl",
                         {"event": "eval", "step": state.global_step, **{f"eval/{k}": v for k, v in metrics.items()}})


def is_sharded(model: Any) -> bool:
    """Whether `model`'s weights are split across processes (FSDP, DeepSpeed ZeRO-3): every rank must join a forward."""
    if model is None:
        return False
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(model, FullyShardedDataParallel):
            return True
        from torch.distributed.fsdp import FSDPModule

        if any(isinstance(m, FSDPModule) for m in model.modules()):
            return True
    except ImportError:  # pragma: no cover - torch without distributed
        pass
    return any(hasattr(p, "ds_id") for p in model.parameters())  # DeepSpeed ZeRO-3 partitioned parameters


@contextlib.contextmanager
def gathered(model: Any):
    """Every parameter of a sharded `model` whole for the block (FSDP 1: `summon_full_params`; FSDP 2: `unshard` of
    every sharded module, resharded after), so evaluation may call any model method, not only `forward`. Every rank
    must enter it (the gathers are collectives). A replicated model passes through unchanged."""
    if model is None or not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield
        return
    from torch.distributed.fsdp import FSDPModule

    shards = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in shards:
        module.unshard()
    try:
        yield
    finally:
        for module in shards:
            module.reshard()


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or gradient norm: the run stopped before the optimizer step, nothing was saved."""


class FiniteGuard(TrainerCallback):
    """Stops a run at the first non-finite loss or gradient norm, before the optimizer applies it.

    The losses of the step's micro-batches are collected by wrapping `trainer.training_step` (no sync per micro-batch);
    `on_pre_optimizer_step` checks them and the gradients once. A non-finite value is written to metrics.jsonl as it
    is (`{"event": "diverged", "loss": NaN, ...}`, not the 0.0 HF's NaN filter would log) and TrainingDivergedError
    ends `trainer.train()`: no optimizer step, no checkpoint, no adapter, no DONE."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._losses: list[Any] = []

    def wrap(self, trainer: Any) -> None:
        inner = trainer.training_step

        def training_step(*args: Any, **kwargs: Any) -> Any:
            loss = inner(*args, **kwargs)
            if hasattr(loss, "detach"):
                self._losses.append(loss.detach())
            return loss

        trainer.training_step = training_step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        losses, self._losses = self._losses, []
        loss = float(torch.stack([x.float().mean() for x in losses]).mean()) if losses else 0.0
        grads = [p.grad.detach() for p in (model.parameters() if model is not None else []) if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))) if grads else 0.0
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        self._diverged(state, state.global_step + 1, loss, grad_norm)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        bad = {k: v for k, v in logs.items() if k in ("loss", "grad_norm") and isinstance(v, float)
               and not math.isfinite(v)}
        if bad:
            self._diverged(state, state.global_step, logs.get("loss"), logs.get("grad_norm"))

    def _diverged(self, state: Any, step: int, loss: Any, grad_norm: Any) -> None:
        if state.is_world_process_zero:
            append_jsonl(self.run_dir / "metrics.jsonl",
                         {"event": "diverged", "step": step, "loss": loss, "grad_norm": grad_norm})
        raise TrainingDivergedError(
            f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm}; the run stopped before "
            f"applying it (no adapter saved, no DONE). Lower training.learning_rate or check the data, then rerun "
            f"with resume=true (from the last complete checkpoint) or output.overwrite=true")


class TimeLimit(TrainerCallback):
    """A wall-time guard: ends training after `minutes`, saving a checkpoint first. Runs stop at their step count
    (`training.max_steps`); when this guard fires instead, `cut_short` says at which step of how many, and a warning
    says so (the run is then not the run its recipe describes)."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self.start = time.time()
        self.cut_short: dict[str, Any] | None = None
        """{"step", "max_steps", "minutes"} once the guard stopped a run before its last step."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() - self.start > 60 * self.minutes:
            control.should_training_stop = True
            control.should_save = True
            if state.global_step < state.max_steps:
                self.cut_short = {"step": state.global_step, "max_steps": state.max_steps, "minutes": self.minutes}
                log.warning("CUT SHORT: the wall-time guard of %g min stopped training at step %d of %d",
                            self.minutes, state.global_step, state.max_steps)


@dataclass
class TrainOutcome:
    seconds: float
    steps_run: int
    """Optimizer steps taken in this call (the global step minus the resumed checkpoint's)."""
    resumed_from: Path | None


class RunLifecycle:
    """The run directory of one recipe across its processes; see the module docstring for the order of calls."""

    def __init__(self, recipe: Recipe, run_dir: Path, state: Any) -> None:
        self.recipe, self.run_dir, self.state = recipe, Path(run_dir), state
        self.started = time.time()
        self.time_limit: TimeLimit | None = None

    @classmethod
    def begin(cls, recipe: Recipe) -> RunLifecycle:
        """Prepare the run directory (main process first; the others join it), write config.yaml, set the seed."""
        state = process_state()
        with state.main_process_first():
            run_dir = prepare_run_dir(recipe) if state.is_main_process else _join_run_dir(recipe)
        if state.is_main_process:
            atomic_write_text(run_dir / "config.yaml", recipe_to_yaml(recipe))
        set_seed(recipe.training.seed)
        return cls(recipe, run_dir, state)

    @property
    def checkpoints(self) -> Path:
        """The trainer's `output_dir`."""
        return self.run_dir / "checkpoints"

    @property
    def is_main_process(self) -> bool:
        return bool(self.state.is_main_process)

    def elapsed(self) -> float:
        return round(time.time() - self.started, 1)

    def attach(self, trainer: Any, evaluate: Callable[[Any], dict[str, Any]] | None = None, eval_steps: int = 0,
               log_extras: Callable[[], dict[str, Any]] | None = None,
               time_limit_minutes: float | None = None) -> None:
        """Add the run callback, the non-finite guard (and a wall-time limit, single-process runs only)."""
        guard = FiniteGuard(self.run_dir)
        guard.wrap(trainer)
        trainer.add_callback(guard)  # before RunCallback: a NaN log record is written as "diverged", then it stops
        trainer.add_callback(RunCallback(self.run_dir, evaluate, eval_steps, log_extras))
        if time_limit_minutes:
            if self.state.num_processes > 1:
                log.warning("the time limit is ignored with %d processes (they could stop at different steps)",
                            self.state.num_processes)
            else:
                self.time_limit = TimeLimit(time_limit_minutes)
                trainer.add_callback(self.time_limit)

    def resume_checkpoint(self) -> Path | None:
        """With `resume=true`: the newest COMPLETE checkpoint (half-written ones are moved aside first).

        metrics.jsonl loses the records logged after that checkpoint's step (they are logged again)."""
        if not self.recipe.resume:
            return None
        if self.is_main_process:
            discard_incomplete_checkpoints(self.run_dir)
        self.state.wait_for_everyone()
        checkpoint = latest_checkpoint(self.run_dir)
        if self.is_main_process:
            step = int(checkpoint.name.split("-")[1]) if checkpoint else 0
            dropped = truncate_metrics(self.run_dir, step)
            if dropped:
                log.info("metrics.jsonl: dropped %d records logged after step %d", dropped, step)
        log.info("resuming from %s", checkpoint)
        return checkpoint

    def train(self, trainer: Any) -> TrainOutcome:
        """`trainer.train()`, resumed from the newest complete checkpoint when the recipe says resume=true."""
        resumed_from = self.resume_checkpoint()
        t0 = time.time()
        trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
        if self.is_main_process:  # where HF users look for it (Trainer.save_model writes it there too)
            atomic_write_text(self.run_dir / "trainer_state.json",
                              json.dumps(dataclasses.asdict(trainer.state), indent=2, sort_keys=True) + "\n")
        start = int(resumed_from.name.split("-")[1]) if resumed_from else 0
        log.info("process %d of %d: %d optimizer steps", self.state.process_index, self.state.num_processes,
                 trainer.state.global_step - start)
        return TrainOutcome(time.time() - t0, trainer.state.global_step - start, resumed_from)

    def save_adapter(self, trainer_or_model: Any) -> Any:
        """Save the adapter to adapter/ (main process) and return the unwrapped model. Call it on EVERY process.

        Given a trainer, the weights come from `trainer.accelerator.get_state_dict` (what `Trainer.save_model` uses):
        with several processes it gathers FSDP shards / ZeRO-3 partitions (a collective, hence every process); the
        adapter's tensors are picked from it and saved through adaptune's checked save. A sharded model is gathered
        with ONE process too (FSDP 2 on one GPU: its parameters are DTensors, which PEFT's save cannot read). Given a
        bare model (no training happened), the module's own weights are saved."""
        from peft import PeftModel

        from ..methods.objective import unwrap_model

        trainer = trainer_or_model if hasattr(trainer_or_model, "accelerator") else None
        wrapped = trainer_or_model
        if trainer is not None:
            wrapped = trainer.model_wrapped if getattr(trainer, "model_wrapped", None) is not None else trainer.model
        model = unwrap_model(trainer.model if trainer is not None else trainer_or_model)
        state_dict = None
        if trainer is not None and isinstance(model, PeftModel) and (
                trainer.accelerator.num_processes > 1 or is_sharded(wrapped)):
            state_dict = _adapter_tensors_materialised(trainer.accelerator.get_state_dict(wrapped), model)
        if self.is_main_process and isinstance(model, PeftModel):
            save_adapter(model, self.run_dir / "adapter", state_dict=state_dict, source=self.recipe.model.source)
        self.state.wait_for_everyone()
        return model

    def finish(self, title: str, summary: dict[str, Any], step: int, final: dict[str, Any],
               eval_extra: dict[str, Any] | None = None, sections: list[str] | None = None) -> Path:
        """Main process: the `final` metrics record, eval.json (`summary` + `eval_extra`), report.md, then DONE."""
        if not self.is_main_process:
            return self.run_dir
        summary.setdefault("wall_seconds", self.elapsed())
        summary.setdefault("world_size", int(self.state.num_processes))
        append_jsonl(self.run_dir / "metrics.jsonl",
                     {"event": "final", "step": step, "world_size": int(self.state.num_processes), **final})
        atomic_write_json(self.run_dir / "eval.json", {**summary, **(eval_extra or {})})
        self._write_model_card(summary)
        write_report(self.run_dir, title, summary, sections)
        atomic_write_text(self.run_dir / "DONE", time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        self.close()
        return self.run_dir

    def _write_model_card(self, summary: dict[str, Any]) -> None:
        """The adapter's README.md again, now with the recipe, the training figures and the eval table."""
        adapter = self.run_dir / "adapter"
        if not (adapter / "adapter_config.json").exists():
            return
        from ..card import write_model_card
        from ..models import get_family

        meta = json.loads((adapter / "adaptune.json").read_text()) if (adapter / "adaptune.json").exists() else {}
        family = meta.get("family")
        config = self.run_dir / "config.yaml"
        write_model_card(adapter, source=self.recipe.model.source, family=family,
                         family_kind=get_family(family).kind if family else None,
                         recipe_text=config.read_text() if config.exists() else None, summary=summary,
                         run_name=self.recipe.name, seed=self.recipe.model.seed)

    def close(self) -> None:
        """Release the run directory's lock (main process; idempotent). `finish` calls it after DONE."""
        if self.is_main_process:
            release_run_lock(self.run_dir)


def _adapter_tensors_materialised(state_dict: dict[str, Any] | None, model: Any) -> dict[str, Any] | None:
    """The gathered state dict with the adapter's tensors (and any DTensor) as plain CPU tensors owning their storage.

    PEFT's save reads every adapter tensor's storage (`id_tensor_storage`, then safetensors). A DTensor, the parameter
    of an FSDP 2 module that was not gathered, has none it can read: "Attempted to access the data pointer on an
    invalid python storage", also after `.clone()` (the clone is a DTensor again). A DTensor on a one-rank mesh is made
    whole here (no peer to wait for); one on a larger mesh means the gather left it sharded: refused by name, since
    making it whole is a collective the other ranks are not in."""
    if state_dict is None:
        return None
    import torch
    from torch.distributed.tensor import DTensor

    names = set(getattr(model, "peft_config", {}) or {})

    def plain(key: str, value: Any) -> Any:
        if isinstance(value, DTensor):
            if value.device_mesh.size() > 1:
                raise RuntimeError(f"the gathered state dict still holds a sharded tensor ({key}, placements "
                                   f"{value.placements}); the adapter cannot be saved from it")
            value = value.full_tensor()
        return value.detach().to("cpu", copy=True).contiguous()

    return {k: (plain(k, v) if isinstance(v, torch.Tensor) and (isinstance(v, DTensor) or any(
        f".{n}." in k or k.endswith(f".{n}") for n in names)) else v) for k, v in state_dict.items()}


def process_state() -> Any:
    """accelerate's `PartialState`, multi-process on CPU too.

    Under `torchrun` on a machine without an accelerator, a plain `PartialState()` sees no GPU and reports ONE process
    (every rank then believes it is the main one: each prepares, writes and deletes the run directory); with
    `cpu=True` it joins the gloo group as `accelerate launch --use_cpu` does. The trainer's arguments say `use_cpu`
    in that case too (`convert.to_training_arguments`), so both see the same world."""
    import os

    import torch
    from accelerate import PartialState

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1
    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()
    return PartialState(cpu=True) if launched and not has_accelerator else PartialState()


def _join_run_dir(recipe: Recipe) -> Path:
    """A non-main process: the folder the main process prepared. Nothing is written; only on a node that does not see
    the main process's filesystem (multi-node without shared storage) is the empty checkpoints folder created."""
    run_dir = run_dir_for(recipe)
    if not (run_dir / "checkpoints").is_dir():
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


__all__ = ["FiniteGuard", "RunCallback", "RunLifecycle", "TimeLimit", "TrainOutcome", "TrainingDivergedError",
           "gathered", "is_sharded"]
