"""`adaptune train RECIPE`: load, attach an adapter, train with the HF Trainer, save, evaluate, report.

The loop is `transformers.Trainer` (so `accelerate launch` gives DDP/FSDP/DeepSpeed, and checkpoints carry the
optimizer, scheduler and RNG state); the recipe's task supplies the batches and the loss. The run directory (config,
metrics, COMPLETE checkpoints and `resume=true`, adapter, eval.json, report, DONE) is `lifecycle.RunLifecycle`'s job.

`run_recipe` dispatches on `recipe.kind` through the `RUN_KINDS` registry: this module registers "adapter";
`adaptune.rl.run` registers "grpo" (training never imports the RL layer).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from transformers import Trainer

from ..config import Recipe, RecipeError, check_recipe_values, validate_params
from ..models import ChatTemplateError, LoadedModel, load_model
from ..registry import METHODS, RUN_KINDS, TASKS
from ..tasks.base import Task
from .convert import to_peft_config, to_training_arguments
from .lifecycle import RunCallback, RunLifecycle, gathered, is_sharded
from .rundir import held_locks, release_run_lock

log = logging.getLogger("adaptune")


def make_task(recipe: Recipe, loaded: LoadedModel) -> Task:
    try:
        task_cls = TASKS.get(recipe.task.name)
    except KeyError as exc:
        raise RecipeError(f"{recipe.source_file}: task.name: {exc.args[0]}") from None
    from .objectives import check_recipe, check_task_params

    check_task_params(recipe, task_cls)  # keys that moved to adapter.params
    params = validate_params(recipe.task.params, task_cls.Params, f"{recipe.source_file}: task.params")
    try:
        task = task_cls(params, loaded, seed=recipe.training.seed)
    except ValueError as exc:
        raise RecipeError(f"{recipe.source_file}: task.name: {exc}") from None
    task.recipe_file = recipe.source_file
    check_recipe(recipe, task, loaded)  # method settings this task cannot honour
    return task


def load_for_recipe(recipe: Recipe) -> LoadedModel:
    """The recipe's model and processor, with `model.chat_template` applied; a `kind: grpo` recipe also gets a
    template that TRL's tool loop can run (the resize tool), or a RecipeError naming the key."""
    m = recipe.model
    try:
        return load_model(m.source, family=m.family, quantization=m.quantization, dtype=m.dtype,
                          trust_remote_code=m.trust_remote_code, seed=m.seed, chat_template=m.chat_template,
                          tool_calling=recipe.kind == "grpo")
    except ChatTemplateError as exc:
        raise RecipeError(f"{recipe.source_file}: {exc}") from None


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
    """`Trainer` whose loss is the recipe's task loss with the adapter method's objective applied on top (R-AMT's
    score L2 and gradient dropout, TokenFLEX's per-batch budget, PH-Reg's distillation; `objectives.py`), for every
    task. Building it refuses a task that cannot honour the adapter's settings (RecipeError). Task and objective
    scalars are logged with the loss."""

    def __init__(self, task: Task, **kwargs: Any) -> None:
        from .objectives import bind, training_collator

        objective = bind(kwargs.get("model"), task)
        kwargs["data_collator"] = training_collator(kwargs.get("data_collator") or task.collate, objective)
        super().__init__(**kwargs)
        self.task = task
        self.objective = objective
        self._extra: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from ..methods.objective import forward_through
        from .objectives import training_loss

        # the task and the objective see the unwrapped model (a PeftModel stays one), inside the wrapper's forward
        loss, logs = forward_through(model, lambda inner: training_loss(inner, self.task, inputs, self.objective))
        for key, value in logs.items():
            self._extra.setdefault(key, []).append(float(value))
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._extra.items():
            logs[key] = sum(values) / len(values)
        self._extra.clear()
        super().log(logs, *args, **kwargs)


def check_sharding(recipe: Recipe, trainer: Any) -> None:
    """Refuse, on every rank and before the first step, a method that does not train under FSDP when the trainer's
    accelerator will shard the model (`MethodInfo.fsdp`)."""
    method = recipe.adapter.method
    if getattr(trainer, "is_fsdp_enabled", False) and method in METHODS and not METHODS.get(method).fsdp:
        raise RecipeError(f"{recipe.source_file}: adapter.method: {method!r} does not train with its model sharded "
                          f"by FSDP (docs/scaling.md); launch it with DDP (recipes/accelerate/ddp.yaml) or one process")


def run_adapter_recipe(recipe: Recipe) -> Path:
    """Run a `kind: adapter` recipe end to end and return its run directory."""
    from .reduction import apply_budget_section, check_budget_section

    check_budget_section(recipe)
    life = RunLifecycle.begin(recipe)
    loaded = load_for_recipe(recipe)
    task = make_task(recipe, loaded)
    model = attach_adapter(recipe, loaded)
    reducer = apply_budget_section(recipe, model, task)
    task.on_train_begin(model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    train_seconds, trainer = 0.0, None
    if n_train and recipe.training.max_steps > 0:
        trainer = TaskTrainer(
            task=task, model=model, args=to_training_arguments(recipe, life.checkpoints),
            train_dataset=task.datasets()["train"], data_collator=task.collate,
        )
        check_sharding(recipe, trainer)
        life.attach(trainer, evaluate=lambda m: task.evaluate(m, "validation", recipe.training.eval_limit),
                    eval_steps=recipe.training.eval_steps)
        train_seconds = life.train(trainer).seconds
    model = life.save_adapter(trainer if trainer is not None else model)  # every process: sharded weights gathered
    sharded = trainer is not None and is_sharded(trainer.model_wrapped)
    if not life.is_main_process and not sharded:  # a replicated model is evaluated by the main process alone
        return life.run_dir
    split = "test" if "test" in task.datasets() else "validation"
    report_extra = getattr(task, "report_sections", None)
    with gathered(trainer.model_wrapped if sharded else None):  # every rank, when the weights are sharded
        metrics = task.evaluate(model, split, recipe.training.eval_limit) if split in task.datasets() else {}
        sections = report_extra(model, life.run_dir) if report_extra and life.is_main_process else []
        if report_extra and sharded and not life.is_main_process:
            # the sections' forward passes are collectives when the weights are sharded (the main process alone
            # would wait forever): the other ranks run them too, drawing into a folder that is not kept
            with tempfile.TemporaryDirectory() as scratch:
                report_extra(model, Path(scratch))
    if not life.is_main_process:
        return life.run_dir
    summary = {"method": recipe.adapter.method, "task": recipe.task.name, "family": loaded.family.name,
               **({"reducer": recipe.budget.reducer, "reducer_tokens": recipe.budget.tokens} if reducer else {}),
               "trainable_params": n_train, "total_params": n_total, "train_seconds": round(train_seconds, 1),
               "wall_seconds": life.elapsed(), "eval_split": split, **{f"eval/{k}": v for k, v in metrics.items()}}
    return life.finish(f"Run {recipe.name}", summary, step=recipe.training.max_steps,
                       final={f"eval/{k}": v for k, v in metrics.items()}, sections=sections)


RUN_KINDS.register("adapter", run_adapter_recipe)


def run_recipe(recipe: Recipe) -> Path:
    """Run a recipe end to end (the runner registered for `recipe.kind`) and return its run directory."""
    try:
        run = RUN_KINDS.get(recipe.kind)
    except KeyError:
        known = " or ".join(repr(k) for k in RUN_KINDS)
        raise RecipeError(f"{recipe.source_file}: kind must be {known}, got {recipe.kind!r}") from None
    check_recipe_values(recipe)  # before the run directory is touched
    before = held_locks()
    try:
        return run(recipe)
    finally:  # a run that raised (diverged, bad task, ...) must not keep its run directory locked in this process
        for run_dir in held_locks() - before:
            release_run_lock(run_dir)


__all__ = ["run_recipe", "run_adapter_recipe", "attach_adapter", "make_task", "load_for_recipe", "TaskTrainer",
           "RunCallback"]
