"""The trainer side of method objectives: find the active method, refuse what a task cannot honour, apply the rest.

What: a method's objective (`adaptune.methods.objective.MethodObjective`, named on its `MethodInfo`) says what the
method adds to training; a task's `TaskLoss` and its `provides` / `needs` capabilities say what the task offers.
This module joins them, for every task and every family a method claims:
- `check` / `problems`: every capability the adapter config's settings require is provided by the task, and every
  capability the task needs is supplied by the method; otherwise a RecipeError naming `adapter.params.<key>` (or
  `adapter.method`) and the recipe file. `check_recipe` runs it when the recipe is loaded (`make_task`, before the
  adapter is attached); `bind` runs it again when the trainer is built (direct API use).
- `check_task_params`: `task.params` keys that moved into the adapter config (`Task.moved_to_adapter`) are refused
  with a message saying where they go now.
- `bind(model, task)`: the objective of the active adaptune method on the model (accelerate / DDP wrappers
  unwrapped), built from that adapter's config: the single source of the method's settings. None without one.
- `training_collator(collate, objective)`: the data collator with the objective's `on_collate` hook (TokenFLEX: one
  budget per batch).
- `training_loss(model, task, batch, objective)`: the task's `TaskLoss`, then the objective's `loss` on top (R-AMT's
  score L2 and gradient dropout, PH-Reg's distillation), with the task's and the objective's logs.

Why: when a task applied a method's objective itself, the method's settings did nothing on every other task, and a
task's own copy of a method setting could silently disagree with the adapter's. Here the trainer applies it once.

How (what `TaskTrainer` does; scripts that run their own loop do the same):
    objective = bind(peft_model, task)                           # RecipeError if the task cannot honour the config
    batch = training_collator(task.collate, objective)(rows)
    loss, logs = training_loss(peft_model, task, batch, objective)
    loss.backward()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..config import Recipe, RecipeError
from ..methods.objective import (
    BUDGET,
    LOSS,
    META_KEY,
    MethodObjective,
    ObjectiveContext,
    active_method,
    unwrap_model,
)
from ..models import LoadedModel
from ..registry import METHODS, TASKS
from ..tasks.base import Task, TaskLoss

_NEEDS = {
    LOSS: "has no loss of its own: its loss is the objective of the adapter method",
    BUDGET: "evaluates at visual-token budgets: it needs an adapter method that handles budgets",
}


def task_name(task: Task | type[Task]) -> str:
    """The registered name of a task (class or instance), else its class name."""
    cls = task if isinstance(task, type) else type(task)
    return next((name for name, registered in TASKS.items() if registered is cls), cls.__name__)


def problems(task: Task | type[Task], method: str, info: Any, config: Any) -> list[str]:
    """What in this (task, method, adapter config) combination cannot work, one message per key; empty if fine."""
    name = task_name(task)
    objective = getattr(info, "objective", None)
    found = []
    if objective is not None:
        for requirement in objective.requirements(config):
            if requirement.capability not in task.provides:
                key = f"adapter.params.{requirement.key}" if requirement.key else "adapter.method"
                found.append(f"{key}: task {name!r} cannot honour {method!r} here: {requirement.reason}")
    supplied = objective.supplies if objective is not None else frozenset()
    for need in sorted(task.needs - supplied):
        suppliers = [n for n, i in METHODS.items() if i.objective is not None and need in i.objective.supplies]
        what = _NEEDS.get(need, f"needs {need!r} from the adapter method")
        found.append(f"adapter.method: task {name!r} {what} ({', '.join(suppliers) or 'none registered'}), "
                     f"not {method!r}")
    return found


def check(task: Task | type[Task], method: str, info: Any, config: Any, where: str | None) -> None:
    """Raise a RecipeError listing `problems(...)`, each line starting with `where` (the recipe file)."""
    found = problems(task, method, info, config)
    if found:
        where = where or "<recipe>"
        raise RecipeError("\n".join(f"{where}: {problem}" for problem in found))


def check_task_params(recipe: Recipe, task_cls: type[Task]) -> None:
    """Refuse `task.params` keys that are settings of the adapter method now (`Task.moved_to_adapter`)."""
    moved = [key for key in task_cls.moved_to_adapter if key in (recipe.task.params or {})]
    if moved:
        keys = ", ".join(f"task.params.{key}" for key in moved)
        targets = ", ".join(f"adapter.params.{key}" for key in moved)
        raise RecipeError(f"{recipe.source_file}: {keys}: a setting of the adapter method, not of task "
                          f"{recipe.task.name!r}; put it in adapter.params ({targets}) and remove it from task.params")


def check_recipe(recipe: Recipe, task: Task, loaded: LoadedModel) -> None:
    """`check` for a recipe's task and adapter section, before the adapter is attached."""
    from .convert import to_peft_config

    config = to_peft_config(recipe.adapter, loaded, where=f"{recipe.source_file}: adapter.params")
    method = recipe.adapter.method
    info = METHODS.get(method) if method in METHODS else None
    check(task, method, info, config, recipe.source_file)


def _method_name(model: torch.nn.Module) -> str:
    """'none', or the PEFT method of the active adapter ('lora', ...), for messages."""
    configs = getattr(unwrap_model(model), "peft_config", None)
    if isinstance(configs, dict) and configs:
        peft_type = getattr(next(iter(configs.values())), "peft_type", None)
        return str(getattr(peft_type, "value", peft_type)).lower()
    return "none"


def bind(model: torch.nn.Module, task: Task, where: str | None = None) -> MethodObjective | None:
    """The objective of the active adaptune method on `model` for `task` (after `check`), or None without one."""
    found = active_method(model)
    info, config = found if found else (None, None)
    method = info.name if info is not None else _method_name(model)
    check(task, method, info, config, where or task.recipe_file or f"{type(task).__name__} with {method!r}")
    if info is None or info.objective is None:
        return None
    return info.objective(config, ObjectiveContext(task=task, family=task.loaded.family.name, seed=task.seed))


class ObjectiveCollator:
    """`collate` with the objective's `on_collate` hook (a class, so dataloader workers can pickle it)."""

    def __init__(self, collate: Callable[..., dict[str, Any]], objective: MethodObjective) -> None:
        self.collate, self.objective = collate, objective

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self.objective.on_collate(rows, self.collate)


def training_collator(collate: Callable[..., dict[str, Any]],
                      objective: MethodObjective | None) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The training data collator: `collate`, through the objective's batch hook when there is an objective."""
    return collate if objective is None else ObjectiveCollator(collate, objective)


def training_loss(model: torch.nn.Module, task: Task, batch: dict[str, Any],
                  objective: MethodObjective | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, logs) of one training batch: the task's loss with the objective applied on top."""
    batch = dict(batch)
    meta = batch.pop(META_KEY, None) or {}
    out = task.loss(model, batch)
    if not isinstance(out, TaskLoss):
        raise TypeError(f"{type(task).__name__}.loss must return a TaskLoss (adaptune.tasks.base), got "
                        f"{type(out).__name__}")
    logs = dict(out.logs)
    if objective is None:
        if out.loss is None:
            raise RuntimeError(f"task {task_name(task)!r} has no loss of its own and the model has no adapter method "
                               "whose objective supplies one")
        return out.loss, logs
    loss, extra = objective.loss(model, out, meta)
    logs.update(extra)
    return loss, logs
