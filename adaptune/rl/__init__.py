"""Reinforcement learning pieces: rollout environments, rewards and LLM-as-judge backends."""
