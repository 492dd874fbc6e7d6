"""Held-out comparisons of a resolution policy against fixed-resolution baselines, scored by a judge.

The two-turn loop itself is `adaptune.budget.two_turn` (shared with the embedded default's evaluation); this module
runs it once per method (policy, always-low, always-full, the tool path on every question, the policy before RL) and
scores the answers with a judge. The oracle is per question (the cheapest resolution whose greedy answer is right,
`oracle_decisions`, the rule of `adaptune label-resolution`), and every method is also summarised on the questions
that need the full image and on those that do not (`row_groups`), so an image-conditioned decision shows.

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
NEEDS_FULL, LOW_SUFFICES = "needs full", "low suffices"


def oracle_decisions(low_correct: Sequence[bool], resize_correct: Sequence[bool]) -> list[bool]:
    """The per-question oracle (`adaptune label-resolution`'s rule, one greedy rollout per resolution): the cheapest
    resolution whose answer is correct. Resize (True) exactly where the direct low-resolution answer is wrong and
    the tool path's (low + full image) is right; elsewhere a direct low answer is as good as any and cheapest.

    >>> oracle_decisions([True, False, False, True], [True, True, False, False])
    [False, True, False, False]
    """
    return [not lo and hi for lo, hi in zip(low_correct, resize_correct, strict=True)]


def row_groups(rows: Sequence[dict[str, Any]], needs_full: Sequence[bool] | None) -> dict[str, list[int]]:
    """Row indices of the sub-populations every method is summarised on besides "all" and each `kind`: the oracle's
    "needs full" / "low suffices" (overall and "<kind>/needs full" ...) and, for rows with a `digit_size` column
    (GlyphQA with `large_digit_fraction`), "<kind>/<size> digit" (same question text, different image)."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        kind = str(row["kind"]) if "kind" in row else None
        if needs_full is not None:
            label = NEEDS_FULL if needs_full[i] else LOW_SUFFICES
            groups.setdefault(label, []).append(i)
            if kind is not None:
                groups.setdefault(f"{kind}/{label}", []).append(i)
        if kind == "fine" and row.get("digit_size"):
            groups.setdefault(f"fine/{row['digit_size']} digit", []).append(i)
    return groups


def compare_methods(model: torch.nn.Module, processor: Any, rows: Sequence[dict[str, Any]],
                    methods: Sequence[str] = METHODS, judge: Any = None, family: FamilySpec | None = None,
                    downsample_factor: float = 0.5, max_new_tokens: int = 64, batch_size: int = 32,
                    base_baselines: bool = True) -> dict[str, Any]:
    """Accuracy, visual tokens and resize rate (overall, per `kind` and per `row_groups`) of each method on `rows`.

    `rows` hold a full-resolution `image`, `question`, `answer` and optionally `kind` ("fine" | "coarse") and
    `digit_size`. Methods: policy (the two-turn loop), low / full (always that resolution in the first turn, direct
    answer), resize_all (the tool path on every question: low + full image), oracle (per question, the cheapest of
    those two that answers correctly: `oracle_decisions` on the greedy low and resize_all answers, so it costs no
    extra generation), before_rl (the two-turn loop with the PEFT adapter disabled). With `base_baselines`
    (default) every method except policy runs with the adapter disabled, i.e. the baselines are the base model.
    Answers are scored by `judge` (default: the rule judge); a score >= 0.5 counts as correct. `out["needs_full"]`
    holds the oracle's decision per row when the oracle ran.
    """
    from .judges import build_judge

    the_judge = build_judge(judge)  # built once, shared by every method
    images = [r["image"] for r in rows]
    questions = [str(r["question"]) for r in rows]
    answers = [str(r["answer"]) for r in rows]
    kinds = [str(r["kind"]) for r in rows] if rows and "kind" in rows[0] else None
    common = dict(family=family, downsample_factor=downsample_factor, max_new_tokens=max_new_tokens,
                  batch_size=batch_size)
    runs: dict[str, tuple[list[Result], list[bool]]] = {}

    def run(method: str) -> tuple[list[Result], list[bool]]:
        if method in runs:
            return runs[method]
        kwargs: dict[str, Any] = dict(common)
        if method in ("low", "full"):
            kwargs["always"] = method
        elif method == "resize_all":
            kwargs["resize"] = [True] * len(rows)
        # Only "policy" runs with the trained adapter; the baselines are the base model (as VisionThink compares).
        if method != "policy" and base_baselines and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                results = answer_with_resolution_policy(model, processor, images, questions, **kwargs)
        else:
            results = answer_with_resolution_policy(model, processor, images, questions, **kwargs)
        runs[method] = (results, score_results(results, questions, answers, the_judge))
        return runs[method]

    out: dict[str, Any] = {"n": len(rows), "methods": {}}
    needs_full = None
    if "oracle" in methods:
        (low, low_ok), (tool, tool_ok) = run("low"), run("resize_all")
        needs_full = oracle_decisions(low_ok, tool_ok)
        runs["oracle"] = ([tool[i] if nf else low[i] for i, nf in enumerate(needs_full)],
                          [tool_ok[i] if nf else low_ok[i] for i, nf in enumerate(needs_full)])
        out["needs_full"] = needs_full
    groups = row_groups(rows, needs_full)
    for method in methods:
        if method == "before_rl" and not hasattr(model, "disable_adapter"):
            out.setdefault("skipped", {})[method] = "no adapter to disable"
            continue
        results, correct = run(method)
        cells = summarize(results, correct, kinds)
        for name, idx in groups.items():
            cells[name] = summarize([results[i] for i in idx], [correct[i] for i in idx])["all"]
        out["methods"][method] = cells
        out.setdefault("examples", {})[method] = [r.raw for r in results[:3]]
    return out


__all__ = ["LOW_SUFFICES", "METHODS", "NEEDS_FULL", "compare_methods", "oracle_decisions", "row_groups",
           "score_results"]
