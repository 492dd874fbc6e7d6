"""Held-out comparisons of a resolution policy against fixed-resolution baselines, scored by a judge.

The two-turn loop itself is `adaptune.budget.two_turn` (shared with the embedded default's evaluation); this module
runs it once per method (policy, always-low, always-full, the tool path on every question, the oracle, the policy
before RL) and scores the answers with a judge.

    from adaptune.rl.inference import compare_methods
    result = compare_methods(model, processor, rows)      # rows: image (full resolution), question, answer[, kind]
    result["methods"]["policy"]["all"]["accuracy"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..budget.two_turn import Result, answer_with_resolution_policy, summarize
from ..models import FamilySpec

def score_results(results: Sequence[Result], questions: Sequence[str], answers: Sequence[str],
                  judge: Any = None) -> list[bool]:
    """Correct or not per result: `judge` (default: the rule judge) scores the parsed answers; >= 0.5 is correct,
    a missing answer is wrong."""
    from .judges import JudgeItem, build_judge

    the_judge = build_judge(judge)
    todo = [i for i, r in enumerate(results) if r.answer]
    verdicts = the_judge.score_sync([JudgeItem(questions[i], answers[i], results[i].answer or "")
                                     for i in todo]) if todo else []
    correct = [False] * len(results)
    for i, v in zip(todo, verdicts, strict=True):
        correct[i] = v.score is not None and v.score >= 0.5
    return correct

METHODS = ("policy", "low", "full", "resize_all", "oracle", "before_rl")


def compare_methods(model: torch.nn.Module, processor: Any, rows: Sequence[dict[str, Any]],
                    methods: Sequence[str] = METHODS, judge: Any = None, family: FamilySpec | None = None,
                    downsample_factor: float = 0.5, max_new_tokens: int = 64, batch_size: int = 32,
                    base_baselines: bool = True) -> dict[str, Any]:
    """Accuracy, visual tokens and resize rate (overall and per `kind`) of each method on `rows`.

    `rows` hold a full-resolution `image`, `question`, `answer` and optionally `kind` ("fine" | "coarse"). Methods:
    policy (the two-turn loop), low / full (always that resolution in the first turn, direct answer), resize_all (the
    tool path on every question: low + full image), oracle (resizes exactly on fine questions), before_rl (the
    two-turn loop with the PEFT adapter disabled). With `base_baselines` (default) every method except policy runs
    with the adapter disabled, i.e. the baselines are the base model. Answers are scored by `judge`
    (default: the rule judge); a score >= 0.5 counts as correct.
    """
    from .judges import build_judge

    the_judge = build_judge(judge)  # built once, shared by every method
    images = [r["image"] for r in rows]
    questions = [str(r["question"]) for r in rows]
    kinds = [str(r["kind"]) for r in rows] if rows and "kind" in rows[0] else None
    common = dict(family=family, downsample_factor=downsample_factor, max_new_tokens=max_new_tokens,
                  batch_size=batch_size)
    out: dict[str, Any] = {"n": len(rows), "methods": {}}
    for method in methods:
        if method == "oracle" and kinds is None:
            out.setdefault("skipped", {})[method] = "oracle needs a `kind` column"
            continue
        if method == "before_rl" and not hasattr(model, "disable_adapter"):
            out.setdefault("skipped", {})[method] = "no adapter to disable"
            continue
        kwargs: dict[str, Any] = dict(common)
        if method in ("low", "full"):
            kwargs["always"] = method
        elif method == "oracle":
            kwargs["resize"] = [k == "fine" for k in kinds]  # type: ignore[union-attr]
        elif method == "resize_all":
            kwargs["resize"] = [True] * len(rows)
        # Only "policy" runs with the trained adapter; the baselines are the base model (as VisionThink compares).
        if method != "policy" and base_baselines and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                results = answer_with_resolution_policy(model, processor, images, questions, **kwargs)
        else:
            results = answer_with_resolution_policy(model, processor, images, questions, **kwargs)
        correct = score_results(results, questions, [str(r["answer"]) for r in rows], the_judge)
        out["methods"][method] = summarize(results, correct, kinds)
        out.setdefault("examples", {})[method] = [r.raw for r in results[:3]]
    return out


__all__ = ["METHODS", "compare_methods", "score_results"]
