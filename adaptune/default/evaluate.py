"""Evaluation of the embedded default on held-out GlyphQA: fixed resolution, and its own choice of resizing.

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
from PIL import Image

from adaptune.data import GlyphQAConfig, build_split, half_resolution
from adaptune.default.sft import parse_tool_call, protocol_messages, render, well_formed
from adaptune.rl.prompting import direct_prefix
from adaptune.tasks.vqa import extract_answer, normalize

VISUAL_TOKENS = {"full": 16, "half": 4}


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


@torch.no_grad()
def generate(model: torch.nn.Module, processor: Any, texts: list[str], images: list[list[Image.Image]],
             max_new_tokens: int = 40, do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Batched generation with the vision special tokens suppressed (the shared `rl.inference` helper)."""
    from adaptune.rl.inference import generate_texts

    return generate_texts(model, processor, texts, images, max_new_tokens, do_sample, temperature)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def answer_fixed(model: torch.nn.Module, processor: Any, items: list[dict[str, Any]], resolution: str,
                 batch_size: int = 32) -> list[dict[str, Any]]:
    """Direct answers with the image at `resolution` ("full" or "half"); one result dict per item."""
    results = []
    prefix = direct_prefix()
    for idx in _batches(len(items), batch_size):
        chunk = [items[i] for i in idx]
        texts = [render(processor, protocol_messages(it["question"]), generation_prompt=True) + prefix for it in chunk]
        images = [[it["image"] if resolution == "full" else half_resolution(it["image"])] for it in chunk]
        for it, gen in zip(chunk, generate(model, processor, texts, images, max_new_tokens=8)):
            pred = gen.split("</answer>")[0].strip()
            results.append({"kind": it["kind"], "qtype": it["qtype"], "resolution": resolution, "prediction": pred,
                            "answer": it["answer"], "correct": normalize(pred) == normalize(it["answer"]),
                            "visual_tokens": VISUAL_TOKENS[resolution], "resized": False})
    return results


def two_turn(model: torch.nn.Module, processor: Any, items: list[dict[str, Any]], do_sample: bool = False,
             temperature: float = 1.0, batch_size: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """The model's own choice: half-resolution first turn; a resize call gets the full image in a tool turn."""
    if do_sample:
        torch.manual_seed(seed)
    results = []
    for idx in _batches(len(items), batch_size):
        chunk = [items[i] for i in idx]
        halves = [half_resolution(it["image"]) for it in chunk]
        texts = [render(processor, protocol_messages(it["question"]), generation_prompt=True) for it in chunk]
        first = generate(model, processor, texts, [[h] for h in halves], 48, do_sample, temperature)
        second_idx = [k for k, text in enumerate(first) if "<tool_call>" in text and parse_tool_call(text)]
        finals = {k: first[k] for k in range(len(chunk))}
        if second_idx:
            texts2 = [render(processor, protocol_messages(chunk[k]["question"], resize=True), generation_prompt=True)
                      for k in second_idx]
            images2 = [[halves[k], chunk[k]["image"]] for k in second_idx]
            for k, text in zip(second_idx, generate(model, processor, texts2, images2, 40, do_sample, temperature)):
                finals[k] = text
        for k, it in enumerate(chunk):
            resized = k in second_idx
            pred = extract_answer(finals[k]) if "<answer>" in finals[k] else ""
            results.append({
                "kind": it["kind"], "qtype": it["qtype"], "resolution": "auto", "first_turn": first[k],
                "final_turn": finals[k], "format": well_formed(first[k]), "resized": resized,
                "tool_tag": "<tool_call>" in first[k], "prediction": pred, "answer": it["answer"],
                "correct": bool(pred) and normalize(pred) == normalize(it["answer"]),
                "final_format": well_formed(finals[k]) if resized else well_formed(first[k]),
                "visual_tokens": VISUAL_TOKENS["half"] + (VISUAL_TOKENS["full"] if resized else 0),
            })
    return results


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
