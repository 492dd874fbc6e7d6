"""Reward plugin for VisionThink recipes: accuracy (LLM or rule judge) + 0.5 * format - resolution penalty.

A recipe names this file and passes its own `reward:` section; the logic lives in `adaptune.rl.rewards`, so this
plugin only maps the section to the factory. Example recipe section:

    grpo:
      reward:
        plugin: rewards/visionthink.py
        num_generations: 8
        penalty: {variant: paper, theta: 0.2, weight: 0.1}
        judge: {name: openai, base_url: "http://127.0.0.1:8000/v1", model: Qwen/Qwen3-1.7B,
                on_failure: fallback, fallback: rule, cache_path: runs/judge.sqlite}

Use from Python:

    from rewards.visionthink import build_reward_funcs   # or load the file with importlib
    trainer = GRPOTrainer(..., reward_funcs=build_reward_funcs({"judge": "rule", "num_generations": 8}))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from adaptune.rl.rewards import make_visionthink_reward

_NOT_FACTORY_KEYS = ("plugin",)


def build_reward_funcs(section: Mapping[str, Any] | None = None) -> list[Callable[..., Any]]:
    """The reward functions for `GRPOTrainer(reward_funcs=...)` from a recipe's reward section.

    Keys are the arguments of `make_visionthink_reward` (judge, num_generations, format_weight, accuracy_weight,
    penalty, question_key, reference_key, tool_name, tool_arguments, log_prefix); an unknown key raises TypeError
    naming it.
    """
    options = {k: v for k, v in dict(section or {}).items() if k not in _NOT_FACTORY_KEYS}
    return [make_visionthink_reward(**options)]


REWARD_FACTORY = make_visionthink_reward
