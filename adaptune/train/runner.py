"""`adaptune train RECIPE`: load, attach an adapter, train with the HF Trainer, save, evaluate, report.

The loop is `transformers.Trainer` (so `accelerate launch` gives DDP/FSDP/DeepSpeed, and checkpoints carry the
optimizer, scheduler and RNG state); the recipe's task supplies the batches and the loss. Checkpoints count only once
they are complete (a marker written after the save), so `resume=true` after a kill continues from the last good one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from transformers import Trainer, TrainerCallback, set_seed

from ..adapters import save_adapter
from ..config import Recipe, RecipeError, recipe_to_yaml, validate_params
from ..models import LoadedModel, load_model
from ..registry import TASKS
from ..tasks.base import Task
from ..utils.io import append_jsonl, atomic_write_json, atomic_write_text
from .convert import to_peft_config, to_training_arguments
from .report import markdown_table, write_report
from .rundir import COMPLETE, discard_incomplete_checkpoints, latest_checkpoint, prepare_run_dir

log = logging.getLogger("adaptune")


def make_task(recipe: Recipe, loaded: LoadedModel) -> Task:
    try:
        task_cls = TASKS.get(recipe.task.name)
    except KeyError as exc:
        raise RecipeError(f"{recipe.source_file}: task.name: {exc.args[0]}") from None
    params = validate_params(recipe.task.params, task_cls.Params, f"{recipe.source_file}: task.params")
    try:
        return task_cls(params, loaded, seed=recipe.training.seed)
    except ValueError as exc:
        raise RecipeError(f"{recipe.source_file}: task.name: {exc}") from None


def load_for_recipe(recipe: Recipe) -> LoadedModel:
    m = recipe.model
    return load_model(m.source, family=m.family, quantization=m.quantization, dtype=m.dtype,
                      trust_remote_code=m.trust_remote_code, seed=m.seed)


def attach_adapter(recipe: Recipe, loaded: LoadedModel) -> torch.nn.Module:
    config = to_peft_config(recipe.adapter, loaded, where=f"{recipe.source_file}: adapter.params")
    model = loaded.model
    if config is None:
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    if recipe.model.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, config)


class TaskTrainer(Trainer):
    """`Trainer` whose loss comes from the recipe's task; extra task scalars are logged with the loss."""

    def __init__(self, task: Task, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = task
        self._extra: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, logs = self.task.loss(model, inputs)
        for key, value in logs.items():
            self._extra.setdefault(key, []).append(float(value))
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._extra.items():
            logs[key] = sum(values) / len(values)
        self._extra.clear()
        super().log(logs, *args, **kwargs)


class RunCallback(TrainerCallback):
    """Appends logs to metrics.jsonl, marks finished checkpoints COMPLETE, evaluates every `eval_steps`."""

    def __init__(self, run_dir: Path, task: Task, eval_steps: int, eval_limit: int | None) -> None:
        self.run_dir, self.task, self.eval_steps, self.eval_limit = run_dir, task, eval_steps, eval_limit
        self.trainer: TaskTrainer | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            append_jsonl(self.run_dir / "metrics.jsonl", {"event": "train", "step": state.global_step, **logs})

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                atomic_write_text(ckpt / COMPLETE, f"{state.global_step}\n")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.eval_steps and state.global_step % self.eval_steps == 0 and state.is_world_process_zero:
            was_training = model.training
            metrics = self.task.evaluate(model, "validation", self.eval_limit)
            model.train(was_training)
            append_jsonl(self.run_dir / "metrics.jsonl",
                         {"event": "eval", "step": state.global_step, **{f"eval/{k}": v for k, v in metrics.items()}})


def run_recipe(recipe: Recipe) -> Path:
    """Run an adapter recipe end to end and return its run directory."""
    if recipe.kind == "grpo":
        from ..rl.glue import run_grpo_recipe

        return run_grpo_recipe(recipe)
    if recipe.kind != "adapter":
        raise RecipeError(f"{recipe.source_file}: kind must be 'adapter' or 'grpo', got {recipe.kind!r}")
    run_dir = prepare_run_dir(recipe)
    atomic_write_text(run_dir / "config.yaml", recipe_to_yaml(recipe))
    set_seed(recipe.training.seed)
    t0 = time.time()
    loaded = load_for_recipe(recipe)
    task = make_task(recipe, loaded)
    model = attach_adapter(recipe, loaded)
    task.on_train_begin(model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    resume_from = None
    if recipe.resume:
        discard_incomplete_checkpoints(run_dir)
        resume_from = latest_checkpoint(run_dir)
        log.info("resuming from %s", resume_from)
    train_seconds = 0.0
    if n_train and recipe.training.max_steps > 0:
        trainer = TaskTrainer(
            task=task, model=model, args=to_training_arguments(recipe, run_dir / "checkpoints"),
            train_dataset=task.datasets()["train"], data_collator=task.collate,
        )
        trainer.add_callback(RunCallback(run_dir, task, recipe.training.eval_steps, recipe.training.eval_limit))
        t_train = time.time()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_seconds = time.time() - t_train
    if isinstance(model, PeftModel):
        save_adapter(model, run_dir / "adapter")
    split = "test" if "test" in task.datasets() else "validation"
    metrics = task.evaluate(model, split, recipe.training.eval_limit) if split in task.datasets() else {}
    summary = {"method": recipe.adapter.method, "task": recipe.task.name, "family": loaded.family.name,
               "trainable_params": n_train, "total_params": n_total, "train_seconds": round(train_seconds, 1),
               "wall_seconds": round(time.time() - t0, 1), "eval_split": split,
               **{f"eval/{k}": v for k, v in metrics.items()}}
    append_jsonl(run_dir / "metrics.jsonl", {"event": "final", "step": recipe.training.max_steps,
                                             **{f"eval/{k}": v for k, v in metrics.items()}})
    atomic_write_json(run_dir / "eval.json", summary)
    sections = []
    report_extra = getattr(task, "report_sections", None)
    if report_extra:
        sections += report_extra(model, run_dir)
    write_report(run_dir, f"Run {recipe.name}", summary, sections)
    atomic_write_text(run_dir / "DONE", time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return run_dir


__all__ = ["run_recipe", "attach_adapter", "make_task", "load_for_recipe", "TaskTrainer", "markdown_table"]
