"""Resolution labels for GRPO data selection: `adaptune label-resolution RUN_OR_MODEL --n 8 --out DIR`.

Why: VisionThink trains on questions where the resolution decision matters (docs/methods.md#visionthink). It rolls
the base model out N = 8 times at each resolution and keeps
- "low_res_suffices": all N answers correct at low AND at full resolution (a direct answer is right);
- "needs_high_res": full-resolution correct minus low-resolution correct >= 6 of 8 (scaled: ceil(0.75 * N));
- everything else is "drop" (too hard, too noisy, or not resolution-bound).

How: each rollout is a forced direct answer (`inference.answer_with_resolution_policy(always="low"|"full")`,
sampled at `--temperature`), scored by a judge (rule by default). The output is the source dataset plus columns
`label`, `low_correct`, `high_correct`, `n_rollouts`, saved with `save_to_disk`; a GRPO recipe reads it with
`grpo.data.dataset: DIR` (rows labelled drop are skipped there).

    adaptune label-resolution default --n 8 --dataset glyphqa --num 500 --out runs/labels
    adaptune label-resolution runs/my-grpo-run --n 4 --dataset data/my_vqa --split train --out runs/labels2
    label_sample(8, 8, 8), label_sample(1, 8, 8), label_sample(3, 5, 8)
    # ('low_res_suffices', 'needs_high_res', 'drop')
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

LOW_RES_SUFFICES, NEEDS_HIGH_RES, DROP = "low_res_suffices", "needs_high_res", "drop"
LABELS = (LOW_RES_SUFFICES, NEEDS_HIGH_RES, DROP)
DEFAULT_MARGIN = 6 / 8


def high_res_threshold(n: int, margin: float = DEFAULT_MARGIN) -> int:
    """How many more correct full-resolution rollouts make a sample "needs_high_res": ceil(margin * n), at least 1.

    >>> high_res_threshold(8), high_res_threshold(4), high_res_threshold(16)
    (6, 3, 12)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return max(1, math.ceil(margin * n - 1e-9))


def label_sample(low_correct: int, high_correct: int, n: int, margin: float = DEFAULT_MARGIN) -> str:
    """The VisionThink label from correct-answer counts out of `n` rollouts at each resolution.

    >>> [label_sample(8, 8, 8), label_sample(2, 8, 8), label_sample(2, 7, 8), label_sample(0, 0, 8)]
    ['low_res_suffices', 'needs_high_res', 'drop', 'drop']
    """
    if not (0 <= low_correct <= n and 0 <= high_correct <= n):
        raise ValueError(f"counts must be within [0, {n}], got low={low_correct}, high={high_correct}")
    if low_correct == n and high_correct == n:
        return LOW_RES_SUFFICES
    if high_correct - low_correct >= high_res_threshold(n, margin):
        return NEEDS_HIGH_RES
    return DROP


def rollout_correct_counts(model: torch.nn.Module, processor: Any, images: Sequence[Any], questions: Sequence[str],
                           answers: Sequence[str], n: int = 8, judge: Any = None, temperature: float = 1.0,
                           max_new_tokens: int = 32, batch_size: int = 32, downsample_factor: float = 0.5,
                           seed: int = 0, low_images: Sequence[Any] | None = None) -> dict[str, list[int]]:
    """Correct answers out of `n` sampled direct answers per row, at low and at full resolution."""
    from ..budget.two_turn import answer_with_resolution_policy
    from .judges import JudgeItem, build_judge

    the_judge = build_judge(judge)
    counts: dict[str, list[int]] = {}
    rep = [i for i in range(len(images)) for _ in range(n)]
    torch.manual_seed(seed)
    for resolution in ("low", "full"):
        results = answer_with_resolution_policy(
            model, processor, [images[i] for i in rep], [questions[i] for i in rep], always=resolution,
            low_images=[low_images[i] for i in rep] if low_images is not None else None,
            downsample_factor=downsample_factor, do_sample=temperature > 0, temperature=max(temperature, 1e-5),
            max_new_tokens=max_new_tokens, batch_size=batch_size)
        items = [JudgeItem(str(questions[i]), str(answers[i]), r.answer or "") for i, r in zip(rep, results)]
        verdicts = the_judge.score_sync(items)
        row_counts = [0] * len(images)
        for i, r, v in zip(rep, results, verdicts, strict=True):
            row_counts[i] += int(bool(r.answer) and v.score is not None and v.score >= 0.5)
        counts[resolution] = row_counts
    return counts


def label_dataset(ds: datasets.Dataset, low_correct: Sequence[int], high_correct: Sequence[int], n: int,
                  margin: float = DEFAULT_MARGIN) -> datasets.Dataset:
    """`ds` with the columns `label`, `low_correct`, `high_correct`, `n_rollouts` added."""
    if not len(ds) == len(low_correct) == len(high_correct):
        raise ValueError(f"{len(ds)} rows but {len(low_correct)} / {len(high_correct)} counts")
    labels = [label_sample(lo, hi, n, margin) for lo, hi in zip(low_correct, high_correct, strict=True)]
    for name, values in (("label", labels), ("low_correct", list(low_correct)),
                         ("high_correct", list(high_correct)), ("n_rollouts", [n] * len(ds))):
        if name in ds.column_names:
            ds = ds.remove_columns(name)
        ds = ds.add_column(name, values)
    return ds


def load_policy(run_or_model: str) -> Any:
    """A run directory (its config.yaml's model + adapter/) or any `load_model` source; returns a LoadedModel."""
    from ..models import load_model

    path = Path(run_or_model)
    if (path / "config.yaml").exists():
        from ..adapters import load_adapter
        from ..config import load_recipe
        from ..train.runner import load_for_recipe

        loaded = load_for_recipe(load_recipe(path / "config.yaml"))
        if (path / "adapter").is_dir():
            loaded.model = load_adapter(loaded.model, path / "adapter").eval()
        return loaded
    return load_model(run_or_model, tool_calling=True)  # the two-turn loop renders tool calls and tool images


def run_labeling(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI's work: load, roll out, label, save; returns the summary."""
    from .data import DataParams, source_dataset

    loaded = load_policy(args.run_or_model)
    dataset = json.loads(args.dataset) if args.dataset.strip().startswith("{") else args.dataset
    from ..data.sources import is_generated

    if args.large_digit_fraction and not is_generated(dataset):
        raise SystemExit(f"--large-digit-fraction applies to the generated glyphqa set, not --dataset {args.dataset}")
    params = DataParams(dataset=dataset, split=args.split, num_samples=args.num, seed=args.seed,
                        fine_fraction=args.fine_fraction, downsample=args.downsample,
                        large_digit_fraction=args.large_digit_fraction)
    ds = source_dataset(params)
    has_low = "full_image" in ds.column_names
    rows = [r for r in ds.select_columns([c for c in ("image", "full_image", "question", "answer") if c in
                                          ds.column_names])]
    keep = [i for i, r in enumerate(rows) if (r.get("full_image") if has_low else r["image"]) is not None]
    skipped = len(rows) - len(keep)
    ds, rows = ds.select(keep), [rows[i] for i in keep]
    judge = json.loads(args.judge) if args.judge.strip().startswith("{") else args.judge
    counts = rollout_correct_counts(
        loaded.model, loaded.processor, [r["full_image"] if has_low else r["image"] for r in rows],
        [r["question"] for r in rows], [r["answer"] for r in rows], n=args.n, judge=judge,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        downsample_factor=args.downsample, seed=args.seed, low_images=[r["image"] for r in rows] if has_low else None)
    labelled = label_dataset(ds, counts["low"], counts["full"], args.n, args.margin)
    out = Path(args.out)
    labelled.save_to_disk(str(out))
    by_label = Counter(labelled["label"])
    summary = {"source": args.run_or_model, "dataset": args.dataset, "rows": len(labelled), "n": args.n,
               "threshold": high_res_threshold(args.n, args.margin), "skipped_without_image": skipped,
               **{label: by_label.get(label, 0) for label in LABELS}}
    if "digit_size" in labelled.column_names and "kind" in labelled.column_names:
        summary["fine_by_digit_size"] = {
            size: dict(Counter(lab for lab, kk, ss in zip(labelled["label"], labelled["kind"], labelled["digit_size"])
                               if kk == "fine" and ss == size)) for size in sorted(set(labelled["digit_size"]))}
    if "kind" in labelled.column_names:
        summary["by_kind"] = {k: dict(Counter(lab for lab, kk in zip(labelled["label"], labelled["kind"]) if kk == k))
                              for k in sorted(set(labelled["kind"]))}
    (out / "label_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _cmd(args: argparse.Namespace) -> int:
    summary = run_labeling(args)
    print(json.dumps(summary, indent=2))
    print(f"labelled dataset: {args.out} (use it as grpo.data.dataset)")
    return 0


def add_cli(subparsers: Any) -> None:
    """`adaptune label-resolution RUN_OR_MODEL --n 8 --out DIR [...]`."""
    p = subparsers.add_parser("label-resolution", help="label samples low-res-suffices / needs-high-res / drop",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("run_or_model", help="a run directory, 'default', 'tiny:qwen3_vl', a model folder or hub id")
    p.add_argument("--out", required=True, help="folder for the labelled dataset (save_to_disk)")
    p.add_argument("--n", type=int, default=8, help="rollouts per sample and resolution (default 8)")
    p.add_argument("--dataset", default="glyphqa", help="a dataset spec (docs/datasets.md): 'glyphqa', a folder, "
                   "parquet / JSON-lines files, a hub id, or a JSON mapping such as "
                   "'{\"path\": \"data/vt\", \"schema\": \"visionthink\"}'")
    p.add_argument("--split", default="train")
    p.add_argument("--num", type=int, default=200, help="samples to label")
    p.add_argument("--fine-fraction", type=float, default=0.5, help="GlyphQA: share of fine questions")
    p.add_argument("--large-digit-fraction", type=float, default=0.0, help="GlyphQA: share of images whose digit "
                   "is drawn large (readable at half resolution; same question text)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--downsample", type=float, default=0.5, help="low resolution = this scale of width and height")
    p.add_argument("--judge", default="rule", help="judge name or a JSON judge section")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help="needs-high-res when high - low >= ceil(margin * n) (default 6/8)")
    p.set_defaults(func=_cmd)


__all__ = ["DROP", "LABELS", "LOW_RES_SUFFICES", "NEEDS_HIGH_RES", "add_cli", "high_res_threshold", "label_dataset",
           "label_sample", "load_policy", "rollout_correct_counts", "run_labeling"]
