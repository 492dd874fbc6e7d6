"""Datasets -> GRPO rows: a conversational prompt, the low-resolution image shown in it, and the full image.

Why: TRL's `GRPOTrainer` takes a `prompt` column (system + user turn, text only: TRL inserts the row's `image` before
the first user text) and hands every column to the environment's `reset` and to the reward functions. So a row here
carries `prompt`, `image` (the DOWNSAMPLED image the model sees first), `full_image` (what `resize_image` returns),
`question`, `answer` (the judge's reference) and `kind` when the source has it.

Sources (`DataParams.dataset`):
- `glyphqa`: generated in code (`adaptune.data.glyphqa.build_split`);
- a folder saved with `save_to_disk` (a Dataset or a DatasetDict + `split`) with `image`, `question`, `answer`
  columns. If it also has a `full_image` column, `image` is taken as the low-resolution view as is (rows whose
  `full_image` is missing are kept; the environment tells the model no sharper image exists). A `label` column from
  `adaptune label-resolution` is honoured: rows labelled `drop` are removed.
Every image goes through `adaptune.data.validate.prepare_image` (read undecoded from the dataset, so a corrupt file,
a decompression bomb or an aspect ratio above 200 is an `InputError` naming the row's `id` or index, not a PIL stack
trace); the first-turn view comes from `adaptune.budget.resolution.downsample`.

    rows = load_grpo_rows(DataParams(dataset="glyphqa", num_samples=256, fine_fraction=0.5))
    rows = to_grpo_rows(my_dataset, downsample=0.5)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from ..budget.protocol import SYSTEM_PROMPT
from ..budget.resolution import NO_UPSCALE
from ..budget.resolution import downsample as downsample_image
from ..data.validate import prepare_image

log = logging.getLogger("adaptune")
KEEP_COLUMNS = ("question", "answer", "kind", "qtype", "id", "label")


@dataclass
class DataParams:
    """Where the GRPO prompts come from (`grpo.data` in a recipe)."""

    dataset: str = "glyphqa"
    """"glyphqa" (generated) or a folder saved with `datasets.save_to_disk`."""
    split: str = "train"
    num_samples: int | None = 512
    """Rows to use (None = all)."""
    fine_fraction: float = 0.5
    """GlyphQA only: share of fine (digit) primary questions."""
    seed: int = 0
    downsample: float = 0.5
    """Scale of width and height of the first-turn image (0.5 = a quarter of the pixels)."""
    drop_labels: list[str] = field(default_factory=lambda: ["drop"])
    """Rows whose `label` column holds one of these are removed (labelled data from `label-resolution`)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.downsample <= 1.0:
            raise ValueError(f"downsample must be in (0, 1], got {self.downsample}")


def prompt_messages(question: str) -> list[dict[str, Any]]:
    """System prompt + the question as text; TRL inserts the row's `image` before it (same layout as
    `adaptune.budget.protocol.user_messages`)."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


FEATURES = {
    "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    "image": datasets.Image(),
    "full_image": datasets.Image(),
    "question": datasets.Value("string"),
    "answer": datasets.Value("string"),
}


def to_grpo_rows(ds: datasets.Dataset, downsample: float = 0.5, drop_labels: tuple[str, ...] = ("drop",),
                 stats: dict[str, int] | None = None) -> datasets.Dataset:
    """Rows of `ds` (image, question, answer[, full_image, kind, qtype, id, label]) as GRPO rows.

    Rows without any image are removed (there is nothing to show). `stats`, when given, receives the counts:
    `rows` (kept), `dropped_by_label`, `no_image`, `missing_full_image` (kept; the environment handles them).
    """
    missing = [c for c in ("image", "question", "answer") if c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset lacks column(s) {missing}; has {ds.column_names}")
    pre_split = "full_image" in ds.column_names
    n_source = len(ds)
    keep = [c for c in KEEP_COLUMNS if c in ds.column_names and c not in ("question", "answer")]
    for column in ("image", "full_image"):  # undecoded: a bad file is reported by prepare_image with its row
        if column in ds.column_names and isinstance(ds.features[column], datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
    labels = ds["label"] if "label" in ds.column_names and drop_labels else None

    def convert(index: int, row: dict[str, Any]) -> dict[str, Any]:
        where = row["id"] if row.get("id") is not None else index
        image = row["image"]
        if pre_split:  # the given low view keeps its geometry (like `downsample`, no small-image upscaling)
            low = prepare_image(image, where, NO_UPSCALE)
            full = prepare_image(row["full_image"], where) if row["full_image"] is not None else None
        else:
            full = prepare_image(image, where)
            low = downsample_image(full, downsample, row=where)
        out = {"prompt": prompt_messages(str(row["question"])), "image": low, "full_image": full,
               "question": str(row["question"]), "answer": str(row["answer"])}
        out.update({c: row[c] for c in keep})
        return out

    rows, n_labelled = [], 0
    for index, row in enumerate(ds):
        if labels is not None and labels[index] in drop_labels:
            continue
        n_labelled += 1
        if row["image"] is not None:
            rows.append(convert(index, row))
    features = datasets.Features({**FEATURES, **{c: ds.features[c] for c in keep}})
    out = datasets.Dataset.from_list(rows, features=features) if rows else datasets.Dataset.from_dict(
        {k: [] for k in features}, features=features)
    counts = {"rows": len(out), "dropped_by_label": n_source - n_labelled, "no_image": n_labelled - len(rows),
              "missing_full_image": sum(r["full_image"] is None for r in rows)}
    if counts["no_image"] or counts["missing_full_image"]:
        log.warning("GRPO rows: %d without any image (removed), %d without a full-resolution image (kept: the "
                    "resize tool answers with an error text)", counts["no_image"], counts["missing_full_image"])
    if stats is not None:
        stats.update(counts)
    return out


def source_dataset(params: DataParams, split: str | None = None, num: int | None = None,
                   fine_fraction: float | None = None) -> datasets.Dataset:
    """The raw source rows (before the GRPO conversion)."""
    split = split or params.split
    num = params.num_samples if num is None else num
    if params.dataset == "glyphqa":
        from ..data.glyphqa import GlyphQAConfig, build_split

        cfg = GlyphQAConfig(seed=params.seed, num_images=max(1, num or 1), num_validation=0, num_test=0)
        return build_split(cfg, split, num_images=num or 500,
                           fine_fraction=params.fine_fraction if fine_fraction is None else fine_fraction)
    path = Path(params.dataset).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"grpo.data.dataset: {params.dataset!r} is neither 'glyphqa' nor an existing folder")
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path} has splits {list(loaded)}, not {split!r}")
        loaded = loaded[split]
    if num is not None:
        loaded = loaded.select(range(min(num, len(loaded))))
    return loaded


def load_grpo_rows(params: DataParams, stats: dict[str, int] | None = None) -> datasets.Dataset:
    """`source_dataset(params)` converted with `to_grpo_rows`."""
    return to_grpo_rows(source_dataset(params), params.downsample, tuple(params.drop_labels), stats)


def heldout_rows(params: DataParams, num_images: int, fine_fraction: float = 0.3, split: str = "test",
                 ) -> list[dict[str, Any]]:
    """Evaluation rows with the FULL-resolution `image`, `question`, `answer` (and `kind`): the GlyphQA held-out mix
    (`fine_fraction` fine questions) or `split` of the dataset folder."""
    if params.dataset == "glyphqa":
        from ..data.glyphqa import GlyphQAConfig, heldout_mix

        ds = heldout_mix(GlyphQAConfig(seed=params.seed), fine_fraction=fine_fraction, num_images=num_images,
                         split=split)
    else:
        ds = source_dataset(params, split=split, num=num_images)
    image_key = "full_image" if "full_image" in ds.column_names else "image"
    keep = [c for c in ("question", "answer", "kind") if c in ds.column_names]
    return [{"image": r[image_key], **{c: r[c] for c in keep}} for r in ds if r[image_key] is not None]


__all__ = ["DataParams", "heldout_rows", "load_grpo_rows", "prompt_messages", "source_dataset", "to_grpo_rows"]
