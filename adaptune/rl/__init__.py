"""Reinforcement learning pieces: GRPO resolution policies on stock TRL, rollout environments, rewards and judges.

A `kind: grpo` recipe goes `sections` (validate the `grpo:` section) -> `completion_budget` (how long a resize rollout
is) -> `trainer` (GRPOConfig, rewards, environment, adapter -> `trl.GRPOTrainer`) -> `run` (the shared run-directory
lifecycle of `adaptune.train.lifecycle`, registered as the recipe kind "grpo") -> `report` (held-out comparison and
report sections). `env`, `data`, `rewards`, `judges/`, `inference` and `labeling` are the parts they assemble.
"""
