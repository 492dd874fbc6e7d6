"""The `grpo:` section of a `kind: grpo` recipe: its schemas and the one function that validates it.

What: typed dataclasses for each part (`data` -> `adaptune.rl.data.DataParams`, `env`, `reward`, `eval`, `trainer`,
`time_limit_minutes`) and `parse_grpo_section(recipe) -> GRPOPlan`.

Why: a typo in a recipe should fail before any model is loaded or any run directory touched, with an error that names
the file and the key path (`recipe.yaml: grpo.trainer.num_generation: not a trl.GRPOConfig field`). Everything that
later builds the trainer, runs it or evaluates it reads the plan, never the raw mapping.

How: each part is checked against its own schema with `adaptune.config.validate_params`; `trainer` keys against the
fields of `trl.GRPOConfig` (defaults below: 8 generations, `dapo` loss, `max_completion_length: auto`); `reward` keys
against the signature of `make_visionthink_reward` (a `plugin:` file checks its own keys); one tool round only.

    plan = parse_grpo_section(load_recipe("recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml"))
    plan.env.turn_tokens, plan.trainer["num_generations"], plan.eval.methods
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from ..config import Recipe, RecipeError, validate_params
from .data import DataParams
from .inference import METHODS
from .rewards import make_visionthink_reward

AUTO = "auto"


@dataclass
class EnvParams:
    """`grpo.env`: the resolution environment and the token budget of one rollout."""

    image_key: str = "image"
    full_image_key: str = "full_image"
    turn_tokens: int = 64
    """Text tokens allowed per assistant turn (think + tool call, think + answer); sizes max_completion_length."""
    suppress_vision_tokens: bool = True


@dataclass
class EvalParams:
    """`grpo.eval`: the held-out comparison written to eval.json and report.md."""

    enabled: bool = True
    dataset: str | None = None
    """'glyphqa' or a dataset folder; default: `grpo.data.dataset`. Set it when training on a labelled folder
    (`label-resolution` output): those rows are training data, and their kind mix is the labels', not the eval mix."""
    num_images: int = 200
    fine_fraction: float = 0.3
    """GlyphQA: share of fine questions in the held-out mix."""
    split: str = "test"
    methods: list[str] = field(default_factory=lambda: ["policy", "low", "full", "resize_all", "oracle", "before_rl"])
    """Any of policy (the trained two-turn loop), low / full (always that resolution in the first turn), resize_all
    (the tool path on every question), oracle (resizes exactly on fine questions; needs a `kind` column), before_rl
    (the two-turn loop with the adapter disabled)."""
    max_new_tokens: int | None = None
    """Per turn; default grpo.env.turn_tokens."""
    batch_size: int = 32
    judge: Any = None
    """Judge spec for scoring; default the reward's judge."""


@dataclass
class GRPOSection:
    """The `grpo:` section of a recipe; each part is validated against its own dataclass."""

    data: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    """Arguments of `adaptune.rl.rewards.make_visionthink_reward` (judge, penalty, format_weight, ...), or
    `plugin: rewards/visionthink.py` plus that plugin's keys."""
    eval: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    """Any `trl.GRPOConfig` field (num_generations, temperature, beta, max_completion_length: auto | int, ...)."""
    time_limit_minutes: float | None = None
    """Stop training (with a final checkpoint) once this much wall time has passed; single-process runs only."""


@dataclass
class GRPOPlan:
    """The validated `grpo:` section."""

    data: DataParams
    env: EnvParams
    reward: dict[str, Any]
    eval: EvalParams
    trainer: dict[str, Any]
    time_limit_minutes: float | None = None


TRAINER_DEFAULTS: dict[str, Any] = {
    "num_generations": 8, "temperature": 1.0, "beta": 0.0, "max_completion_length": AUTO, "log_completions": False,
    "scale_rewards": "group", "loss_type": "dapo", "shuffle_dataset": True, "gradient_checkpointing": False,
}


def parse_grpo_section(recipe: Recipe) -> GRPOPlan:
    """Validate `recipe.grpo` (unknown keys -> RecipeError naming `grpo.<part>.<key>` and the file)."""
    where = f"{recipe.source_file}: grpo"
    if recipe.budget.reducer is not None or recipe.budget.tokens is not None:
        raise RecipeError(f"{recipe.source_file}: budget: a GRPO resolution policy spends its visual tokens through "
                          "the resize tool; token reducers (budget.reducer) apply to kind: adapter recipes")
    section = validate_params(dict(recipe.grpo or {}), GRPOSection, where)
    data = validate_params(section.data, DataParams, f"{where}.data")
    env = validate_params(section.env, EnvParams, f"{where}.env")
    evaluation = validate_params(section.eval, EvalParams, f"{where}.eval")
    bad = [m for m in evaluation.methods if m not in METHODS]
    if bad:
        raise RecipeError(f"{where}.eval.methods: unknown {bad}; known: {', '.join(METHODS)}")
    from trl import GRPOConfig

    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    for key in section.trainer:
        if key not in known:
            raise RecipeError(f"{where}.trainer.{key}: not a trl.GRPOConfig field")
    trainer = {**TRAINER_DEFAULTS, **section.trainer}
    iterations = trainer.get("max_tool_calling_iterations", 1)
    if iterations != 1:
        raise RecipeError(f"{where}.trainer.max_tool_calling_iterations={iterations}: the resolution protocol allows "
                          "exactly one tool round (one resize); leave it unset")
    trainer["max_tool_calling_iterations"] = 1
    reward = dict(section.reward)
    _check_reward_keys(reward, f"{where}.reward")
    return GRPOPlan(data, env, reward, evaluation, trainer, section.time_limit_minutes)


def _check_reward_keys(reward: dict[str, Any], where: str) -> None:
    if "plugin" in reward:
        return  # the plugin validates its own keys
    known = set(inspect.signature(make_visionthink_reward).parameters)
    for key in reward:
        if key not in known:
            raise RecipeError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")


__all__ = ["AUTO", "EnvParams", "EvalParams", "GRPOPlan", "GRPOSection", "TRAINER_DEFAULTS", "parse_grpo_section"]
