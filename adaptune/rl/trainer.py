"""A `kind: grpo` recipe -> a stock TRL `GRPOTrainer` (environment + rewards + adapter), ready to train.

What: `grpo_config_kwargs` (the `trl.GRPOConfig` arguments), `build_reward_funcs` (the VisionThink reward or a plugin
file's), and `build_grpo_trainer(recipe) -> (trainer, GRPOParts)`, which loads the model, the rows, the environment
factory and the adapter config and hands them to TRL unchanged.

Why: VisionThink had to fork veRL; TRL 1.16 has every piece (multi-turn `environment_factory`, image tool results,
async reward functions, `log_metric`, PEFT), so this module only converts and checks, in one place, the traps of
running a resolution policy on it:
- every vision special token is suppressed while sampling (TRL's `generation_kwargs` replace its own one-token list;
  with vLLM they are banned through `logit_bias`);
- `max_completion_length` is large enough for the returned image (`adaptune.rl.completion_budget`);
- `max_tool_calling_iterations=1` (`adaptune.rl.sections`), groups whole on each process, CPU without bf16.

Zero-variance groups: TRL 1.16 does not drop them (no DAPO dynamic sampling); their advantages are exactly 0, so they
give no policy gradient; they only dilute the `dapo` token normaliser and still feel the KL term when beta > 0. We log
their share (`frac_reward_zero_std` from TRL, `visionthink/zero_std_groups` from the reward) instead of resampling.

How:

    trainer, parts = build_grpo_trainer(load_recipe("recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml"))
    trainer.train()            # `adaptune.rl.run` wraps this in the run-directory lifecycle
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..budget.resolution import check_downsample_saves
from ..budget.two_turn import vision_token_ids
from ..config import Recipe, RecipeError
from ..models import LoadedModel
from ..train.convert import to_peft_config, training_arguments_kwargs
from ..train.runner import load_for_recipe
from .completion_budget import completion_budget, resolve_completion_length
from .data import load_grpo_rows
from .env import EnvFactory
from .rewards import make_visionthink_reward
from .sections import GRPOPlan, parse_grpo_section


def grpo_config_kwargs(recipe: Recipe, plan: GRPOPlan, loaded: LoadedModel, output_dir: Path,
                       budget: dict[str, int]) -> dict[str, Any]:
    """GRPOConfig keyword arguments: shared Trainer fields from `training`, then the GRPO section."""
    where = f"{recipe.source_file}: grpo"
    kwargs = training_arguments_kwargs(recipe.training, output_dir)
    kwargs.pop("eval_strategy", None)
    trainer = dict(plan.trainer)
    trainer["max_completion_length"] = resolve_completion_length(trainer.get("max_completion_length"), budget, where)
    kwargs.update(trainer)
    if not kwargs.get("use_cpu") and kwargs.get("bf16") is None:
        kwargs["bf16"] = False
    if kwargs.get("use_cpu"):
        kwargs["bf16"] = False  # CPU: fp32 (bf16 autocast on CPU is slow and changes sampling)
    num_generations = kwargs["num_generations"]
    steps = kwargs.get("steps_per_generation") or kwargs.get("gradient_accumulation_steps", 1)
    local = kwargs.get("generation_batch_size") or kwargs["per_device_train_batch_size"] * steps
    if local % num_generations:
        raise RecipeError(
            f"{where}: the per-process generation batch ({local} = training.batch_size x steps_per_generation) must be "
            f"a multiple of grpo.trainer.num_generations={num_generations}, so that every group of rollouts of one "
            f"prompt stays on one process (the group resolution penalty and the advantages are computed per group)")
    if plan.env.suppress_vision_tokens:
        kwargs["generation_kwargs"] = suppress_vision_kwargs(
            loaded.processor, dict(kwargs.get("generation_kwargs") or {}), bool(kwargs.get("use_vllm")))
    return kwargs


def suppress_vision_kwargs(processor: Any, generation_kwargs: dict[str, Any], use_vllm: bool) -> dict[str, Any]:
    """Add every vision special token to the suppressed set (transformers) or ban it via logit_bias (vLLM)."""
    ids = vision_token_ids(processor)
    if use_vllm:
        bias = {int(k): float(v) for k, v in (generation_kwargs.get("logit_bias") or {}).items()}
        bias.update({i: -100.0 for i in ids})
        generation_kwargs["logit_bias"] = bias
    else:
        generation_kwargs["suppress_tokens"] = sorted(set(generation_kwargs.get("suppress_tokens") or []) | set(ids))
    return generation_kwargs


def build_reward_funcs(section: dict[str, Any], num_generations: int, where: str = "grpo.reward") -> list[Any]:
    """`make_visionthink_reward(**section)` (num_generations filled in), or the `plugin` file's `build_reward_funcs`."""
    section = dict(section)
    section.setdefault("num_generations", num_generations)
    try:
        if "plugin" in section:
            path = Path(section["plugin"])
            spec = importlib.util.spec_from_file_location(f"adaptune_reward_{path.stem}", path)
            if spec is None or spec.loader is None or not path.exists():
                raise RecipeError(f"{where}.plugin: cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return list(module.build_reward_funcs(section))
        return [make_visionthink_reward(**section)]
    except (TypeError, ValueError, KeyError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


@dataclass
class GRPOParts:
    """Everything `build_grpo_trainer` assembled (for the run loop, tests and notebooks)."""

    plan: GRPOPlan
    loaded: LoadedModel
    env_factory: EnvFactory
    reward_funcs: list[Any]
    train_rows: Any
    data_stats: dict[str, int]
    budget: dict[str, int]
    config: Any


def build_grpo_trainer(recipe: Recipe, output_dir: Path | None = None, callbacks: list[Any] | None = None):
    """A ready `trl.GRPOTrainer` for a `kind: grpo` recipe and the parts it was built from."""
    from trl import GRPOConfig, GRPOTrainer

    plan = parse_grpo_section(recipe)
    where = f"{recipe.source_file}: grpo"
    loaded = load_for_recipe(recipe)
    if not loaded.family.supports_tools or loaded.family.kind != "vlm":
        raise RecipeError(f"{recipe.source_file}: model family {loaded.family.name!r} has no tool-calling chat "
                          "template; GRPO resolution policies need a family with supports_tools (qwen3_vl, qwen2_5_vl)")
    data_stats: dict[str, int] = {}
    try:
        rows = load_grpo_rows(plan.data, data_stats)
    except (ValueError, FileNotFoundError) as exc:
        raise RecipeError(f"{where}.data: {exc}") from None
    if len(rows) == 0:
        raise RecipeError(f"{where}.data: no usable rows (every row lacked an image or was labelled drop)")
    sizes = [im.size for im in rows.select(range(min(64, len(rows))))[plan.env.full_image_key] if im is not None]
    budget = completion_budget(loaded.processor, loaded.family, sizes, plan.env.turn_tokens)
    # Full images above the processor's pixel cap: the low view costs as much as the full one (PixelCapWarning).
    check_downsample_saves(loaded.family, loaded.processor, sizes, plan.data.downsample,
                           f"{where}.data (first {len(sizes)} rows)")
    output_dir = Path(output_dir or Path("runs") / recipe.name / "checkpoints")
    kwargs = grpo_config_kwargs(recipe, plan, loaded, output_dir, budget)
    try:
        config = GRPOConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}.trainer: {exc}") from None
    peft_config = to_peft_config(recipe.adapter, loaded, where=f"{recipe.source_file}: adapter.params")
    if peft_config is None:
        for p in loaded.model.parameters():
            p.requires_grad_(True)
    factory = EnvFactory(loaded.processor, loaded.family, plan.env.image_key, plan.env.full_image_key)
    rewards = build_reward_funcs(plan.reward, config.num_generations, f"{where}.reward")
    trainer = GRPOTrainer(model=loaded.model, reward_funcs=rewards, args=config, train_dataset=rows,
                          processing_class=loaded.processor, peft_config=peft_config, environment_factory=factory,
                          callbacks=callbacks)
    parts = GRPOParts(plan, loaded, factory, rewards, rows, data_stats, budget, config)
    return trainer, parts


__all__ = ["GRPOParts", "build_grpo_trainer", "build_reward_funcs", "grpo_config_kwargs", "suppress_vision_kwargs"]
