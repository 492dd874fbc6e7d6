"""`adaptune train` for `kind: grpo` recipes: the GRPO trainer inside the shared run-directory lifecycle.

What: `run_grpo_recipe(recipe) -> run directory`, registered as the recipe kind "grpo" (so `adaptune.train.run_recipe`
reaches it without the training layer importing RL).

Why: a GRPO run writes the same folder as an adapter run (config.yaml, metrics.jsonl, checkpoints/ with COMPLETE
markers and `resume=true`, adapter/, eval.json, report.md with plots, DONE) and obeys the same refusals, so it uses
`adaptune.train.lifecycle.RunLifecycle` rather than a copy of it. What is GRPO-specific stays here: the environment's
counters in every training log, the stop rule (`training.max_steps`; `grpo.time_limit_minutes` is only a guard, and a
run it stops early is marked CUT SHORT at step N of M in the log, metrics.jsonl, eval.json and report.md), and the
held-out policy comparison in the report.

How:

    adaptune train recipes/qwen3_vl/glyphqa/visionthink_grpo.yaml
    run_dir = run_grpo_recipe(load_recipe("recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Recipe
from ..registry import RUN_KINDS
from ..train.lifecycle import RunLifecycle, gathered, is_sharded
from ..utils.io import append_jsonl, atomic_write_text
from .report import evaluate_policy, report_sections
from .rewards import DroppedGroupsError
from .sections import parse_grpo_section
from .trainer import build_grpo_trainer


@RUN_KINDS.register("grpo")
def run_grpo_recipe(recipe: Recipe) -> Path:
    """Run a `kind: grpo` recipe end to end and return its run directory."""
    parse_grpo_section(recipe)  # fail on a bad section before touching the run directory
    life = RunLifecycle.begin(recipe)
    trainer, parts = build_grpo_trainer(recipe, life.checkpoints)
    life.attach(trainer, log_extras=parts.env_factory.stats.snapshot, time_limit_minutes=parts.plan.time_limit_minutes)
    train_seconds, steps_run = 0.0, 0
    if recipe.training.max_steps > 0:
        try:
            outcome = life.train(trainer)
        except DroppedGroupsError as exc:  # the judge failed on most groups: stop loudly, record why, no DONE
            if life.is_main_process:
                append_jsonl(life.run_dir / "metrics.jsonl",
                             {"event": "aborted", "step": trainer.state.global_step, "reason": str(exc)})
                atomic_write_text(life.run_dir / "ABORTED", f"{exc}\n")
            raise
        train_seconds, steps_run = outcome.seconds, outcome.steps_run
    cut_short = life.time_limit.cut_short if life.time_limit is not None else None
    if cut_short and life.is_main_process:
        append_jsonl(life.run_dir / "metrics.jsonl", {"event": "cut_short", **cut_short})
    model = life.save_adapter(trainer)  # every process: sharded weights are gathered
    if recipe.adapter.method == "none" and steps_run > 0:  # a full fine-tune: the whole policy, loadable as is
        trainer.save_model(str(life.run_dir / "model"))  # every process: ZeRO-3 / FSDP gather the partitions
        if life.is_main_process:
            parts.loaded.processor.save_pretrained(life.run_dir / "model")
    sharded = is_sharded(trainer.model_wrapped)
    if not life.is_main_process and not sharded:  # a replicated policy is evaluated by the main process alone
        return life.run_dir
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary: dict[str, Any] = {
        "method": recipe.adapter.method, "family": parts.loaded.family.name, "model": recipe.model.source,
        "chat_template": parts.loaded.chat_template,
        "trainable_params": n_train, "total_params": sum(p.numel() for p in model.parameters()),
        "steps": trainer.state.global_step, "max_steps": recipe.training.max_steps,
        "cut_short": bool(cut_short), "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(1, steps_run), 3),
        "num_generations": parts.config.num_generations, "max_completion_length": parts.config.max_completion_length,
        **{f"data/{k}": v for k, v in parts.data_stats.items()},
        **{f"env/{k}": v for k, v in parts.env_factory.stats.totals().items()},
    }
    evaluation: dict[str, Any] = {}
    if parts.plan.eval.enabled:
        with gathered(trainer.model_wrapped if sharded else None):  # every rank, when the weights are sharded
            evaluation = evaluate_policy(model, parts.loaded, parts.plan)
        summary.update(evaluation.get("headline", {}))
    if not life.is_main_process:
        return life.run_dir
    summary["wall_seconds"] = life.elapsed()
    sections = report_sections(life.run_dir, evaluation, parts.budget)
    title = f"Run {recipe.name} (VisionThink GRPO)"
    if cut_short:  # loud: this is not the run the recipe describes
        title += f": CUT SHORT at step {cut_short['step']} of {cut_short['max_steps']}"
        sections.insert(0, f"\n> **Cut short.** The wall-time guard (`grpo.time_limit_minutes: "
                           f"{cut_short['minutes']:g}`) stopped training at step {cut_short['step']} of "
                           f"{cut_short['max_steps']} (`training.max_steps`); the figures below are of a shorter run "
                           "than the recipe's. Rerun on a quieter machine or raise the guard.\n")
    return life.finish(title, summary, step=trainer.state.global_step, final=evaluation.get("headline", {}),
                       eval_extra={"evaluation": evaluation, "cut_short_at": cut_short}, sections=sections)


__all__ = ["run_grpo_recipe"]
