"""Judges: decide whether an answer matches a reference. One async interface, backends chosen in the recipe.

Backends (registered in `adaptune.registry.JUDGES`): `rule` (exact / numeric / ANLS, the default), `openai` (any
OpenAI-compatible server), `hf` (a local transformers LM), `embedding` (sentence-embedding cosine; optional extra).
`build_judge` turns a recipe section into a judge wrapped in the failure policy:

    judge:
      name: openai                 # rule | openai | hf | embedding
      on_failure: fallback         # drop (default) | zero | fallback
      fallback: rule               # a name or a nested section like this one
      base_url: http://127.0.0.1:8000/v1
      model: Qwen/Qwen3-1.7B
      cache_path: runs/judge_cache.sqlite

    >>> judge = build_judge({"name": "rule", "rel_tol": 0.05})
    >>> judge.score_sync([JudgeItem("How many?", "100", "103")])[0].score
    1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adaptune.registry import JUDGES

from .base import BaseJudge, FailurePolicyJudge, Judge, JudgeItem, Verdict, config_from_mapping, run_sync
from .embedding import EmbeddingJudge, EmbeddingJudgeConfig
from .hf import HFJudge, HFJudgeConfig
from .openai_compat import OpenAIJudge, OpenAIJudgeConfig
from .prompt import PROMPT_VERSION, build_messages, parse_verdict
from .rule import RuleJudge, RuleJudgeConfig

__all__ = [
    "PROMPT_VERSION",
    "BaseJudge",
    "EmbeddingJudge",
    "EmbeddingJudgeConfig",
    "FailurePolicyJudge",
    "HFJudge",
    "HFJudgeConfig",
    "Judge",
    "JudgeItem",
    "OpenAIJudge",
    "OpenAIJudgeConfig",
    "RuleJudge",
    "RuleJudgeConfig",
    "Verdict",
    "build_judge",
    "build_messages",
    "parse_verdict",
    "run_sync",
]


def _plain(spec: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (without importing omegaconf when it is not in use)."""
    if type(spec).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(spec, resolve=True)
    return spec


def build_backend(name: str, options: Mapping[str, Any] | None = None) -> BaseJudge:
    """One bare judge (no failure policy) from its registered name and config keys."""
    judge_cls = JUDGES.get(name)
    config = config_from_mapping(judge_cls.config_class, options or {}, where=f"judge {name!r}")
    return judge_cls(config)


def build_judge(spec: str | Mapping[str, Any] | Judge | None = None) -> Judge:
    """A judge from a name, a recipe section, or an existing judge (returned unchanged). None -> `rule`.

    Mapping keys: `name`, `on_failure` (drop | zero | fallback), `fallback` (name or section), and the backend's
    config fields; an unknown key is an error naming it.
    """
    spec = _plain(spec)
    if spec is None:
        spec = "rule"
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        if hasattr(spec, "score") and hasattr(spec, "stats"):
            return spec  # already a judge
        raise TypeError(f"cannot build a judge from {type(spec).__name__}")
    options = dict(spec)
    name = options.pop("name", "rule")
    on_failure = options.pop("on_failure", "drop")
    fallback_spec = options.pop("fallback", None)
    backend = build_backend(name, options)
    fallback = build_judge(fallback_spec) if fallback_spec is not None else None
    if on_failure == "fallback" and fallback is None:
        fallback = build_judge("rule")
    return FailurePolicyJudge(backend, on_failure=on_failure, fallback=fallback)
