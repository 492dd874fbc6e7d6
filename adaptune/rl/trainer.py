"""A `kind: grpo` recipe -> a stock TRL `GRPOTrainer` (environment + rewards + adapter), ready to train.

What: `grpo_config_kwargs` (the `trl.GRPOConfig` arguments), `build_rewards` (the reward functions of `grpo.rewards`
and their `reward_weights`: by default the VisionThink parts accuracy, format and resolution_penalty), and
`build_grpo_trainer(recipe) -> (trainer, GRPOParts)`, which loads the model, the rows, the environment factory and the
adapter config and hands them to TRL unchanged.

Why: VisionThink had to fork veRL; TRL 1.16 has every piece (multi-turn `environment_factory`, image tool results,
async reward functions, `log_metric`, PEFT), so this module only converts and checks, in one place, the traps of
running a resolution policy on it:
- every vision special token is suppressed while sampling (TRL's `generation_kwargs` replace its own one-token list;
  with vLLM they are banned through `logit_bias`);
- `max_completion_length` is large enough for the returned image (`adaptune.rl.completion_budget`);
- `max_tool_calling_iterations=1` (`adaptune.rl.sections`), groups whole on each process.

Zero-variance groups: TRL 1.16 does not drop them (no DAPO dynamic sampling); their advantages are exactly 0, so they
give no policy gradient; they only dilute the `dapo` token normaliser and still feel the KL term when beta > 0. We log
their share (`frac_reward_zero_std` from TRL, `visionthink/zero_std_groups` from the reward) instead of resampling.

How:

    trainer, parts = build_grpo_trainer(load_recipe("recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml"))
    trainer.train()            # `adaptune.rl.run` wraps this in the run-directory lifecycle
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..budget.resolution import check_downsample_saves
from ..budget.two_turn import vision_token_ids
from ..config import Recipe, RecipeError
from ..models import LoadedModel
from ..train.convert import check_bf16, to_peft_config, training_arguments_kwargs
from ..train.runner import load_for_recipe
from .completion_budget import completion_budget, resolve_completion_length
from .data import load_grpo_rows
from .env import EnvFactory
from .rewards import VISIONTHINK_PARTS, RewardSet, load_reward_object, make_visionthink_rewards
from .sections import GRPOPlan, RewardEntry, parse_grpo_section, parse_reward_entries


def grpo_config_kwargs(recipe: Recipe, plan: GRPOPlan, loaded: LoadedModel, output_dir: Path,
                       budget: dict[str, int]) -> dict[str, Any]:
    """GRPOConfig keyword arguments: shared Trainer fields from `training`, then the GRPO section."""
    where = f"{recipe.source_file}: grpo"
    kwargs = training_arguments_kwargs(recipe.training, output_dir)
    kwargs.pop("eval_strategy", None)
    trainer = dict(plan.trainer)
    trainer["max_completion_length"] = resolve_completion_length(trainer.get("max_completion_length"), budget, where)
    kwargs.update(trainer)
    if kwargs.get("bf16") is None:  # GRPOConfig would turn None into bf16 on every device
        kwargs["bf16"] = False
    check_bf16(kwargs)  # the device is accelerate's choice; bf16 where it cannot run is refused, not dropped
    num_generations = kwargs["num_generations"]
    steps = kwargs.get("steps_per_generation") or kwargs.get("gradient_accumulation_steps", 1)
    local = kwargs.get("generation_batch_size") or kwargs["per_device_train_batch_size"] * steps
    if local % num_generations:
        raise RecipeError(
            f"{where}: the per-process generation batch ({local} = training.per_device_train_batch_size x "
            f"steps_per_generation) must be a multiple of grpo.trainer.num_generations={num_generations}, so that "
            f"every group of rollouts of one prompt stays on one process (the group resolution penalty and the "
            f"advantages are computed per group)")
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


def build_rewards(reward: dict[str, Any], entries: list[RewardEntry] | None, num_generations: int,
                  where: str = "grpo") -> RewardSet:
    """The reward functions and their TRL `reward_weights` for a validated `grpo:` section.

    `entries` (`GRPOPlan.rewards`): the VisionThink parts among them share one scorer built from `reward`; other
    names are registered factories or `module:function` specs. None: `reward["plugin"]`'s `build_reward_funcs`
    (or the function it names), which returns a list of functions (weights 1) or a `RewardSet`."""
    reward = dict(reward)
    reward.setdefault("num_generations", num_generations)
    try:
        if entries is None:
            plugin = load_reward_object(reward["plugin"], "build_reward_funcs", f"{where}.reward.plugin")
            made = plugin(reward)
            if isinstance(made, RewardSet):
                return made
            funcs = list(made)
            return RewardSet(funcs, [1.0] * len(funcs))
        parts = [e for e in entries if e.name in VISIONTHINK_PARTS]
        shared = {k: v for k, v in reward.items() if k not in ("accuracy_weight", "format_weight")}
        vt = make_visionthink_rewards(**shared, parts=[e.name for e in parts], weights=[e.weight for e in parts])
        by_name = dict(zip(vt.names, vt.funcs, strict=True))
        funcs = [by_name[e.name] if e.name in by_name else _other_reward(e, num_generations, where)
                 for e in entries]
        return RewardSet(funcs, [float(e.weight) for e in entries])
    except (TypeError, ValueError, KeyError) as exc:
        raise RecipeError(f"{where}.reward: {exc}") from None


def _other_reward(entry: RewardEntry, num_generations: int, where: str) -> Any:
    """A `grpo.rewards` entry that is not a VisionThink part: a registered factory, or a `module:function` spec
    (the function itself, or a factory when `params` are given)."""
    from ..registry import REWARDS

    if ":" in entry.name or entry.name.endswith(".py"):
        obj = load_reward_object(entry.name, where=f"{where}.rewards")
        if not entry.params:
            return obj
    else:
        obj = REWARDS.get(entry.name)
    params = dict(entry.params)
    if "num_generations" in inspect.signature(obj).parameters:
        params.setdefault("num_generations", num_generations)
    return obj(**params)


def build_reward_funcs(section: dict[str, Any], num_generations: int, where: str = "grpo.reward") -> list[Any]:
    """The functions of `build_rewards` for a `grpo.reward` section alone (default parts, or its plugin)."""
    base = where.rsplit(".reward", 1)[0] if where.endswith(".reward") else where
    return build_rewards(section, parse_reward_entries(None, dict(section), base), num_generations, base).funcs


def save_kl_reference(model: Any, folder: Path) -> None:
    """TRL builds the KL reference of a full fine-tune (no adapter, `beta != 0`) by loading the policy's
    `config._name_or_path` again. A model built in code (`tiny:<family>`) has no such path: save it once (safetensors)
    and point the config there, so the reference is the policy's starting weights as for a real checkpoint."""
    model.save_pretrained(folder)
    model.config._name_or_path = str(folder)


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
    loaded = load_for_recipe(recipe)  # a template TRL's tool loop can run, or a RecipeError naming model.chat_template
    if not loaded.family.supports_tools or loaded.family.kind != "vlm":
        raise RecipeError(f"{recipe.source_file}: model family {loaded.family.name!r} cannot run the resize tool in "
                          "GRPO (FamilySpec.supports_tools is false: its checkpoints and adaptune's templates do "
                          "not call tools); families that can: qwen3_vl, qwen2_5_vl")
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
    rewards = build_rewards(plan.reward, plan.rewards, kwargs["num_generations"], where)
    kwargs["reward_weights"] = rewards.weights  # TRL sums weight * reward and logs rewards/<name>/mean per function
    try:
        config = GRPOConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}.trainer: {exc}") from None
    peft_config = to_peft_config(recipe.adapter, loaded, where=f"{recipe.source_file}: adapter.params")
    if peft_config is None:  # adapter.method: none on kind: grpo = full fine-tune
        for p in loaded.model.parameters():
            p.requires_grad_(True)
        if config.beta != 0.0 and not getattr(loaded.model.config, "_name_or_path", ""):
            save_kl_reference(loaded.model, output_dir.parent / "kl_reference")
    factory = EnvFactory(loaded.processor, loaded.family, plan.env.image_key, plan.env.full_image_key)
    trainer = GRPOTrainer(model=loaded.model, reward_funcs=rewards.funcs, args=config, train_dataset=rows,
                          processing_class=loaded.processor, peft_config=peft_config, environment_factory=factory,
                          callbacks=callbacks)
    parts = GRPOParts(plan, loaded, factory, rewards.funcs, rows, data_stats, budget, config)
    return trainer, parts


__all__ = ["GRPOParts", "build_grpo_trainer", "build_reward_funcs", "build_rewards", "grpo_config_kwargs",
           "suppress_vision_kwargs"]
