"""Reinforcement learning pieces: GRPO resolution policies on stock TRL, rollout environments, rewards and judges.

A `kind: grpo` recipe goes `sections` (validate the `grpo:` section) -> `completion_budget` (how long a resize rollout
is) -> `trainer` (GRPOConfig, rewards, environment, adapter -> `trl.GRPOTrainer`) -> `run` (the shared run-directory
lifecycle of `adaptune.train.lifecycle`, registered as the recipe kind "grpo") -> `report` (held-out comparison and
report sections). `env`, `data`, `rewards`, `judges/`, `inference` and `labeling` are the parts they assemble.

The public surface, for building `trl.GRPOTrainer` yourself (docs/grpo_yourself.md runs it end to end):

- rows: `to_grpo_rows(dataset, downsample=0.5)` -> the low view (`image`), the `full_image`, the chat `prompt`;
- environment: `make_env_factory(processor, family)` -> `GRPOTrainer(environment_factory=...)` (one `resize_image`
  tool per rollout; `factory.stats.snapshot()` counts resizes and visual tokens);
- rewards: `make_visionthink_rewards(judge="rule", num_generations=8)` -> a `RewardSet`: `reward_funcs=rs.funcs`
  (accuracy, format, resolution_penalty) and `GRPOConfig(reward_weights=rs.weights)`; `make_visionthink_reward` is
  the same reward as one summed callable; `PenaltyConfig`, `build_judge` configure them;
- budget: `completion_budget(processor, family, full_sizes, turn_tokens)["required"]` -> `max_completion_length`
  (TRL silently drops a tool result that does not fit);
- sampling: `vision_token_ids(processor)` and `suppress_vision_kwargs(processor, {}, use_vllm=False)` ->
  `GRPOConfig(generation_kwargs=...)` (a sampled vision token breaks the rollout);
- the recipe route: `build_grpo_trainer(recipe) -> (trainer, GRPOParts)`.

Names are imported on first use, except `completion_budget` and `resolve_completion_length`: their module has the
same name as the function, and a submodule import would otherwise leave the module under that name.
"""

from __future__ import annotations

import importlib
from typing import Any

from .completion_budget import completion_budget, resolve_completion_length  # noqa: F401 (see the docstring)

_EXPORTS = {
    "to_grpo_rows": "data", "prompt_messages": "data",
    "EnvFactory": "env", "ResolutionEnv": "env", "make_env_factory": "env",
    "RewardSet": "rewards", "PenaltyConfig": "rewards", "VISIONTHINK_PARTS": "rewards",
    "make_visionthink_rewards": "rewards", "make_visionthink_reward": "rewards", "DroppedGroupsError": "rewards",
    "build_judge": "judges",
    "suppress_vision_kwargs": "trainer", "build_grpo_trainer": "trainer", "GRPOParts": "trainer",
}

__all__ = sorted([*_EXPORTS, "vision_token_ids", "completion_budget", "resolve_completion_length"])


def __getattr__(name: str) -> Any:
    if name == "vision_token_ids":
        from ..budget.two_turn import vision_token_ids

        return vision_token_ids
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
