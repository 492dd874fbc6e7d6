"""Evaluation of the embedded default on held-out GlyphQA: fixed resolution, and its own choice of resizing.

Both run the one two-turn loop of the package (`adaptune.budget.two_turn`), with the one downsampler
(`adaptune.budget.downsample`) and visual tokens counted by the model family:
- `answer_fixed`: the protocol prompt with the image at one resolution and the assistant turn prefilled with the
  direct-answer thought, so the model only writes the answer (accuracy per kind x resolution).
- `two_turn`: free generation at half resolution; when the first turn holds a `resize_image` call, the tool turn with
  the full image is appended (as TRL renders it) and the model answers again. Greedy or sampled.

    from adaptune.default.evaluate import heldout_items, answer_fixed, two_turn
    items = heldout_items(per_kind=50)
    preds = answer_fixed(model, processor, items, "full")
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from adaptune.budget.protocol import turn_format
from adaptune.budget.two_turn import answer_with_resolution_policy
from adaptune.data import GlyphQAConfig, build_split
from adaptune.tasks.vqa import normalize


def heldout_items(per_kind: int = 50, seed: int = 0, split: str = "test") -> list[dict[str, Any]]:
    """`per_kind` fine (digit) and `per_kind` coarse questions, each from a different held-out test image."""
    rows = build_split(GlyphQAConfig(seed=seed), split, num_images=2 * per_kind, fine_fraction=0.5)
    rng = np.random.default_rng(seed + 1)
    items = []
    for i, row in enumerate(rows):
        kind = "fine" if i < per_kind else "coarse"
        options = [j for j, k in enumerate(row["kinds"]) if k == kind]
        j = options[-1] if kind == "fine" else options[int(rng.integers(len(options)))]
        items.append({"image": row["image"].convert("RGB"), "question": row["questions"][j],
                      "answer": row["answers"][j], "kind": kind, "qtype": row["qtypes"][j]})
    return items


def _correct(prediction: str | None, answer: str) -> bool:
    return bool(prediction) and normalize(prediction) == normalize(answer)


def answer_fixed(model: torch.nn.Module, processor: Any, items: list[dict[str, Any]], resolution: str,
                 batch_size: int = 32) -> list[dict[str, Any]]:
    """Direct answers with the image at `resolution` ("full" or "half"); one result dict per item."""
    if resolution not in ("full", "half"):
        raise ValueError(f"resolution must be 'full' or 'half', got {resolution!r}")
    results = answer_with_resolution_policy(
        model, processor, [it["image"] for it in items], [it["question"] for it in items],
        always="full" if resolution == "full" else "low", max_new_tokens=12, batch_size=batch_size)
    return [{"kind": it["kind"], "qtype": it["qtype"], "resolution": resolution, "prediction": r.answer or "",
             "answer": it["answer"], "correct": _correct(r.answer, it["answer"]), "visual_tokens": r.visual_tokens,
             "resized": False} for it, r in zip(items, results, strict=True)]


def two_turn(model: torch.nn.Module, processor: Any, items: list[dict[str, Any]], do_sample: bool = False,
             temperature: float = 1.0, batch_size: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """The model's own choice: half-resolution first turn; a resize call gets the full image in a tool turn."""
    if do_sample:
        torch.manual_seed(seed)
    results = answer_with_resolution_policy(
        model, processor, [it["image"] for it in items], [it["question"] for it in items], max_new_tokens=48,
        do_sample=do_sample, temperature=temperature, batch_size=batch_size)
    out = []
    for it, r in zip(items, results, strict=True):
        first, final = r.raw[0], r.raw[-1]
        out.append({
            "kind": it["kind"], "qtype": it["qtype"], "resolution": "auto", "first_turn": first, "final_turn": final,
            "format": turn_format(first), "resized": r.resized, "tool_tag": "<tool_call>" in first,
            "prediction": r.answer or "", "answer": it["answer"], "correct": _correct(r.answer, it["answer"]),
            "final_format": turn_format(final), "visual_tokens": r.visual_tokens,
        })
    return out


def cell_summary(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{kind: {accuracy, resize_rate, visual_tokens, well_formed, n}} plus an "all" entry."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[r["kind"]].append(r)
        groups["all"].append(r)
    out = {}
    for kind, rs in sorted(groups.items()):
        out[kind] = {
            "accuracy": sum(r["correct"] for r in rs) / len(rs),
            "resize_rate": sum(r["resized"] for r in rs) / len(rs),
            "visual_tokens": sum(r["visual_tokens"] for r in rs) / len(rs),
            "well_formed": sum(r.get("final_format", "answer") is not None for r in rs) / len(rs),
            "n": len(rs),
        }
    return out
