"""The `grpo:` section of a `kind: grpo` recipe: its schemas and the one function that validates it.

What: typed dataclasses for each part (`data` -> `adaptune.rl.data.DataParams`, `env`, `reward`, `eval`, `trainer`,
`time_limit_minutes`) and `parse_grpo_section(recipe) -> GRPOPlan`.

Why: a typo in a recipe should fail before any model is loaded or any run directory touched, with an error that names
the file and the key path (`recipe.yaml: grpo.trainer.num_generation: not a trl.GRPOConfig field`). Everything that
later builds the trainer, runs it or evaluates it reads the plan, never the raw mapping.

How: each part is checked against its own schema with `adaptune.config.validate_params`; `trainer` keys against the
fields of `trl.GRPOConfig` (defaults below: 8 generations, `dapo` loss, `max_completion_length: auto`; a `training:`
field there is refused); `reward` keys against the signature of `make_visionthink_rewards` (a `plugin:` checks its own
keys); `rewards` entries resolve to reward functions with finite weights; one tool round only.

    plan = parse_grpo_section(load_recipe("recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml"))
    plan.env.turn_tokens, plan.trainer["num_generations"], plan.eval.methods
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from ..config import Recipe, RecipeError, TrainingSection, validate_params
from ..data.sources import is_generated, parse_spec
from .data import DataParams
from .inference import METHODS
from .rewards import VISIONTHINK_PARTS, load_reward_object, make_visionthink_rewards

AUTO = "auto"


@dataclass
class EnvParams:
    """`grpo.env`: the resolution environment and the token budget of one rollout."""

    image_key: str = "image"
    full_image_key: str = "full_image"
    turn_tokens: int = 512
    """Text tokens allowed per assistant turn (think + tool call, think + answer); sizes max_completion_length.
    512 leaves room for a real model's reasoning (VisionThink's turns run to a few hundred tokens; its 2048-token
    response limit covers two such turns plus the full-resolution image the tool returns). Tiny models set a few
    dozen: their turns are short and every token costs a CPU forward."""
    suppress_vision_tokens: bool = True


@dataclass
class EvalParams:
    """`grpo.eval`: the held-out comparison written to eval.json and report.md."""

    enabled: bool = True
    dataset: Any = None
    """A dataset spec like `grpo.data.dataset` (docs/datasets.md); default: `grpo.data.dataset`. Set it when
    training on a labelled folder (`label-resolution` output): those rows are training data, and their kind mix is
    the labels', not the eval mix. A `kind` column (fine / coarse, or a boolean: true = needs the full image, e.g.
    VisionThink's `info.use_tool`) adds per-kind rows; GlyphQA's `digit_size` adds the small / large digit split."""
    num_images: int = 200
    fine_fraction: float = 0.3
    """GlyphQA: share of fine questions in the held-out mix."""
    split: str = "test"
    methods: list[str] = field(default_factory=lambda: ["policy", "low", "full", "resize_all", "oracle", "before_rl"])
    """Any of policy (the trained two-turn loop), low / full (always that resolution in the first turn), resize_all
    (the tool path on every question), oracle (per question, the cheaper of low and resize_all whose greedy answer
    is right; computed from those two runs), before_rl
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
    """The VisionThink reward's settings, the arguments of `adaptune.rl.rewards.make_visionthink_rewards` (judge,
    penalty, format_weight, ...); or `plugin:` (`rewards/visionthink.py`, `path.py:function`,
    `package.module:function`) plus that plugin's keys."""
    rewards: list[Any] | None = None
    """The reward functions handed to TRL with their `reward_weights`: `[{name, weight: 1.0, params: {}}, ...]`.
    `name` is a VisionThink part (`accuracy`, `format`, `resolution_penalty`: they share `grpo.reward`'s judge and
    penalty), another `adaptune info` reward (a factory called with `params`), or `package.module:function` /
    `path/to/file.py:function` (the reward function itself; a factory called with `params` when they are given).
    Default: accuracy (reward.accuracy_weight, 1.0), format (reward.format_weight, 0.5), resolution_penalty (1.0)."""
    eval: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    """Any `trl.GRPOConfig` field (num_generations, temperature, beta, max_completion_length: auto | int, ...)."""
    time_limit_minutes: float | None = None
    """A guard, not the stop rule (`training.max_steps` is): if this much wall time passes first, training stops with a
    final checkpoint and the run is marked CUT SHORT at step N of M (log, metrics.jsonl, eval.json, report.md).
    Single-process runs only; must be > 0."""


@dataclass
class RewardEntry:
    """One entry of `grpo.rewards`: a reward function by name and its weight in TRL's weighted sum."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class GRPOPlan:
    """The validated `grpo:` section."""

    data: DataParams
    env: EnvParams
    reward: dict[str, Any]
    eval: EvalParams
    trainer: dict[str, Any]
    time_limit_minutes: float | None = None
    rewards: list[RewardEntry] | None = None
    """None: the plugin's functions (`grpo.reward.plugin`); else the entries, defaults filled in."""


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
    if evaluation.dataset is not None:
        parse_spec(evaluation.dataset, f"{where}.eval.dataset")
    if data.large_digit_fraction and not is_generated(data.dataset) and not (
            evaluation.dataset is not None and is_generated(evaluation.dataset)):
        raise RecipeError(f"{where}.data.large_digit_fraction={data.large_digit_fraction}: applies to generated "
                          "GlyphQA only (grpo.data.dataset or grpo.eval.dataset: glyphqa); neither is")
    bad = [m for m in evaluation.methods if m not in METHODS]
    if bad:
        raise RecipeError(f"{where}.eval.methods: unknown {bad}; known: {', '.join(METHODS)}")
    from trl import GRPOConfig

    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    shared = {f.name for f in dataclasses.fields(TrainingSection)} - {"extra"}
    for key in section.trainer:
        if key not in known:
            raise RecipeError(f"{where}.trainer.{key}: not a trl.GRPOConfig field")
        if key in shared:
            raise RecipeError(f"{where}.trainer.{key}: a training field (the same TrainingArguments name); set "
                              f"training.{key} instead")
    trainer = {**TRAINER_DEFAULTS, **section.trainer}
    iterations = trainer.get("max_tool_calling_iterations", 1)
    if iterations != 1:
        raise RecipeError(f"{where}.trainer.max_tool_calling_iterations={iterations}: the resolution protocol allows "
                          "exactly one tool round (one resize); leave it unset")
    trainer["max_tool_calling_iterations"] = 1
    if "reward_weights" in section.trainer:
        raise RecipeError(f"{where}.trainer.reward_weights: the weights live with their functions; set "
                          "grpo.rewards: [{name: accuracy, weight: 1.0}, ...]")
    reward = dict(section.reward)
    _check_reward_keys(reward, f"{where}.reward")
    rewards = parse_reward_entries(section.rewards, reward, where)
    if section.time_limit_minutes is not None and not section.time_limit_minutes > 0:
        raise RecipeError(f"{where}.time_limit_minutes={section.time_limit_minutes}: must be > 0 (a wall-time guard "
                          "in minutes), or null for none")
    return GRPOPlan(data, env, reward, evaluation, trainer, section.time_limit_minutes, rewards)


def _check_reward_keys(reward: dict[str, Any], where: str) -> None:
    if "plugin" in reward:
        return  # the plugin validates its own keys
    known = set(inspect.signature(make_visionthink_rewards).parameters) - {"parts", "weights"}
    for key in reward:
        if key not in known:
            raise RecipeError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")


def parse_reward_entries(entries: list[Any] | None, reward: dict[str, Any], where: str) -> list[RewardEntry] | None:
    """`grpo.rewards` checked (names resolve, weights finite, parts not repeated), or the default VisionThink parts
    weighted by `grpo.reward`'s accuracy_weight / format_weight; None when `grpo.reward.plugin` supplies them."""
    if "plugin" in reward:
        if entries is not None:
            raise RecipeError(f"{where}.rewards: a reward plugin (grpo.reward.plugin) supplies the reward functions; "
                              "use one of the two")
        return None
    if entries is None:
        weights = {"accuracy": reward.get("accuracy_weight", 1.0), "format": reward.get("format_weight", 0.5),
                   "resolution_penalty": 1.0}
        return [RewardEntry(name, float(weights[name])) for name in VISIONTHINK_PARTS]
    for key in ("accuracy_weight", "format_weight"):
        if key in reward:
            raise RecipeError(f"{where}.reward.{key}: with grpo.rewards the weights are set there "
                              "({name: ..., weight: ...})")
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{where}.rewards: a non-empty list of {{name, weight, params}}")
    out: list[RewardEntry] = []
    for i, item in enumerate(entries):
        at = f"{where}.rewards[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise RecipeError(f"{at}: a mapping {{name, weight, params}} or a name, got {item!r}")
        entry = validate_params(item, RewardEntry, at)
        if not isinstance(entry.weight, (int, float)) or not math.isfinite(entry.weight):
            raise RecipeError(f"{at}.weight: a finite number, got {entry.weight!r}")
        check_reward_name(entry, at)
        out.append(entry)
    names = [e.name for e in out if e.name in VISIONTHINK_PARTS]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RecipeError(f"{where}.rewards: {repeated[0]!r} listed twice")
    return out


def check_reward_name(entry: RewardEntry, where: str) -> None:
    """The entry's name resolves (a VisionThink part, a registered reward, or an importable `module:function`)."""
    from ..registry import REWARDS

    if entry.name in VISIONTHINK_PARTS:
        if entry.params:
            raise RecipeError(f"{where}.params: the VisionThink parts take their settings from grpo.reward "
                              "(judge, penalty, ...)")
        return
    if ":" in entry.name or entry.name.endswith(".py"):
        try:
            load_reward_object(entry.name, where=f"{where}.name")
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        return
    if entry.name not in REWARDS:
        raise RecipeError(f"{where}.name: unknown reward {entry.name!r} (known: {', '.join(REWARDS.names())}; or "
                          "'package.module:function' / 'path/to/file.py:function')")


__all__ = ["AUTO", "EnvParams", "EvalParams", "GRPOPlan", "GRPOSection", "RewardEntry", "TRAINER_DEFAULTS",
           "parse_grpo_section", "parse_reward_entries"]
