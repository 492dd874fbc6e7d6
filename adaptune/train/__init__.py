"""Training: recipe -> model + task + adapter -> HF Trainer -> run directory."""

from .runner import attach_adapter, load_for_recipe, make_task, run_recipe

__all__ = ["attach_adapter", "load_for_recipe", "make_task", "run_recipe"]
