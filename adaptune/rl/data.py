"""Datasets -> GRPO rows: a conversational prompt, the low-resolution image shown in it, and the full image.

Why: TRL's `GRPOTrainer` takes a `prompt` column (system + user turn, text only: TRL inserts the row's `image` before
the first user text) and hands every column to the environment's `reset` and to the reward functions. So a row here
carries `prompt`, `image` (the DOWNSAMPLED image the model sees first), `full_image` (what `resize_image` returns),
`question`, `answer` (the judge's reference) and `kind` when the source has it.

Sources (`DataParams.dataset`): any dataset spec of `adaptune.data.sources` (docs/datasets.md): `glyphqa`
(generated in code by `adaptune.data.glyphqa.build_split`), a `save_to_disk` folder, parquet / JSON-lines files, a hub
id, with a column map or the shipped `visionthink` schema. If the rows also have a `full_image` column, `image` is
taken as the low-resolution view as is (rows whose `full_image` is missing are kept; the environment tells the model
no sharper image exists). A `label` column from `adaptune label-resolution` is honoured: rows labelled `drop` are
removed. Per-row target sizes (`target_width` / `target_height`, VisionThink's `info.tgt_width` / `tgt_height`) set
the first-turn view's size; `min_pixels` / `max_pixels` normalise every full image first (VisionThink's pixel range).

Memory: the rows are built with `datasets.Dataset.map`, written in batches to Arrow with the images encoded (PNG), so
no list of decoded images is ever held; TRL decodes a row's images when its batch is drawn. For a source on disk the
result is memory-mapped (`benchmarks/bench_data_memory.py` measures resident memory per 1,000 rows).
Every image goes through `adaptune.data.validate.prepare_image` (read undecoded from the dataset, so a corrupt file,
a decompression bomb or an aspect ratio above 200 is an `InputError` naming the row's `id` or index, not a PIL stack
trace); the first-turn view comes from `adaptune.budget.resolution.downsample`.

    rows = load_grpo_rows(DataParams(dataset="glyphqa", num_samples=256, fine_fraction=0.5))
    rows = to_grpo_rows(my_dataset, downsample=0.5)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import datasets
from PIL import Image

from ..budget.protocol import SYSTEM_PROMPT
from ..budget.resolution import NO_UPSCALE
from ..budget.resolution import downsample as downsample_image
from ..data.sources import check_pixel_range, fit_pixels, is_generated, load_source, parse_spec
from ..data.validate import prepare_image

log = logging.getLogger("adaptune")
KEEP_COLUMNS = ("question", "answer", "kind", "qtype", "id", "label", "digit_size")


@dataclass
class DataParams:
    """Where the GRPO prompts come from (`grpo.data` in a recipe)."""

    dataset: Any = "glyphqa"
    """A dataset spec (docs/datasets.md): "glyphqa" (generated), a folder, parquet / JSON-lines files, a hub id, or
    a mapping {path, split, columns, schema, name, image_root}."""
    split: str = "train"
    num_samples: int | None = 512
    """Rows to use (None = all)."""
    fine_fraction: float = 0.5
    """GlyphQA only: share of fine (digit) primary questions."""
    large_digit_fraction: float = 0.0
    """GlyphQA only: share of images whose digit is drawn large, readable at half resolution (the same digit
    question; `GlyphQAConfig.large_digit_fraction`), in the generated rows and in the held-out GlyphQA mix of
    `grpo.eval` (also when the training rows are a labelled folder)."""
    seed: int = 0
    downsample: float = 0.5
    """Scale of width and height of the first-turn image (0.5 = a quarter of the pixels)."""
    drop_labels: list[str] = field(default_factory=lambda: ["drop"])
    """Rows whose `label` column holds one of these are removed (labelled data from `label-resolution`)."""
    min_pixels: int | None = None
    """Full images with fewer pixels are scaled up to this many (VisionThink: 512 * 512); null: as they are."""
    max_pixels: int | None = None
    """Full images with more pixels are scaled down to this many (VisionThink: 2048 * 2048); null: as they are."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.large_digit_fraction <= 1.0:
            raise ValueError(f"large_digit_fraction must be a fraction in [0, 1], got {self.large_digit_fraction}")
        if not 0.0 < self.downsample <= 1.0:
            raise ValueError(f"downsample must be in (0, 1], got {self.downsample}")
        check_pixel_range(self.min_pixels, self.max_pixels)
        parse_spec(self.dataset, "grpo.data.dataset")  # a malformed spec fails with the recipe, not at load time


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


def full_view(image: Any, row: Any, min_pixels: int | None = None, max_pixels: int | None = None,
              target: tuple[int, int] | None = None, downsample: float = 0.5) -> Image.Image:
    """The full-resolution image of a row: validated, normalised into [min_pixels, max_pixels], and, with a per-row
    target size (the first-turn view's), resized so that `downsample` of it is that target."""
    full = fit_pixels(prepare_image(image, row), min_pixels, max_pixels)
    if target is not None and all(target):
        size = (max(1, round(target[0] / downsample)), max(1, round(target[1] / downsample)))
        full = full.resize(size, Image.Resampling.LANCZOS) if size != full.size else full
    return full


def _target(row: dict[str, Any]) -> tuple[int, int] | None:
    width, height = row.get("target_width"), row.get("target_height")
    return (int(width), int(height)) if width and height else None


def to_grpo_rows(ds: datasets.Dataset, downsample: float = 0.5, drop_labels: tuple[str, ...] = ("drop",),
                 stats: dict[str, int] | None = None, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> datasets.Dataset:
    """Rows of `ds` (image, question, answer[, full_image, kind, qtype, id, label, target_width, target_height]) as
    GRPO rows, built with `Dataset.map` (images encoded in Arrow, never a list of decoded images).

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
    labelled = [i for i in range(n_source) if labels is None or labels[i] not in drop_labels]
    cells = ds.select_columns(["image", "full_image"] if pre_split else ["image"]).with_format("arrow")[:]
    has_image = cells["image"].is_valid().to_pylist()  # Arrow validity: nothing decoded
    rows = [i for i in labelled if has_image[i]]
    full_valid = cells["full_image"].is_valid().to_pylist() if pre_split else None

    def convert(row: dict[str, Any], position: int) -> dict[str, Any]:
        index = rows[position]
        where = row["id"] if row.get("id") is not None else index
        image = row["image"]
        if pre_split:  # the given low view keeps its geometry (like `downsample`, no small-image upscaling)
            low = prepare_image(image, where, NO_UPSCALE)
            full = full_view(row["full_image"], where, min_pixels, max_pixels) \
                if row["full_image"] is not None else None
        else:
            full = full_view(image, where, min_pixels, max_pixels, _target(row), downsample)
            low = downsample_image(full, downsample, row=where)
        out = {"prompt": prompt_messages(str(row["question"])), "image": low, "full_image": full,
               "question": str(row["question"]), "answer": str(row["answer"])}
        out.update({c: row[c] for c in keep})
        return out

    features = datasets.Features({**FEATURES, **{c: ds.features[c] for c in keep}})
    # small writer batches: map holds at most this many converted rows (decoded images) before writing them
    out = ds.select(rows).map(convert, with_indices=True, remove_columns=ds.column_names, features=features,
                              writer_batch_size=64, desc="GRPO rows")
    counts = {"rows": len(out), "dropped_by_label": n_source - len(labelled), "no_image": len(labelled) - len(rows),
              "missing_full_image": sum(not full_valid[i] for i in rows) if full_valid is not None else 0}
    if counts["no_image"] or counts["missing_full_image"]:
        log.warning("GRPO rows: %d without any image (removed), %d without a full-resolution image (kept: the "
                    "resize tool answers with an error text)", counts["no_image"], counts["missing_full_image"])
    if stats is not None:
        stats.update(counts)
    return out


def source_dataset(params: DataParams, split: str | None = None, num: int | None = None,
                   fine_fraction: float | None = None, key: str = "grpo.data.dataset") -> datasets.Dataset:
    """The raw source rows (before the GRPO conversion), through the one resolver (`adaptune.data.sources`)."""
    num = params.num_samples if num is None else num

    def generate(split_name: str, n: int | None) -> datasets.Dataset:
        from ..data.glyphqa import GlyphQAConfig, build_split

        cfg = GlyphQAConfig(seed=params.seed, num_images=max(1, n or 1), num_validation=0, num_test=0,
                            large_digit_fraction=params.large_digit_fraction)
        return build_split(cfg, split_name, num_images=n or 500,
                           fine_fraction=params.fine_fraction if fine_fraction is None else fine_fraction)

    return load_source(params.dataset, split or params.split, num, key=key, seed=params.seed, generate=generate)


def load_grpo_rows(params: DataParams, stats: dict[str, int] | None = None) -> datasets.Dataset:
    """`source_dataset(params)` converted with `to_grpo_rows`."""
    return to_grpo_rows(source_dataset(params), params.downsample, tuple(params.drop_labels), stats,
                        params.min_pixels, params.max_pixels)


def heldout_rows(params: DataParams, num_images: int, fine_fraction: float = 0.3, split: str = "test",
                 key: str = "grpo.data.dataset") -> list[dict[str, Any]]:
    """Evaluation rows with the FULL-resolution `image` (normalised like the training rows), `question`, `answer`
    (and `kind`): the GlyphQA held-out mix (`fine_fraction` fine questions) or `split` of any dataset spec."""
    if is_generated(params.dataset):
        from ..data.glyphqa import GlyphQAConfig, heldout_mix

        ds = heldout_mix(GlyphQAConfig(seed=params.seed, large_digit_fraction=params.large_digit_fraction),
                         fine_fraction=fine_fraction, num_images=num_images,
                         split=split)
    else:
        ds = source_dataset(params, split=split, num=num_images, key=key)
    image_key = "full_image" if "full_image" in ds.column_names else "image"
    keep = [c for c in ("question", "answer", "kind", "digit_size") if c in ds.column_names]
    rows = []
    for index, r in enumerate(ds):
        if r[image_key] is None:
            continue
        where = r["id"] if r.get("id") is not None else index
        target = _target(r) if image_key == "image" else None
        rows.append({"image": full_view(r[image_key], where, params.min_pixels, params.max_pixels, target,
                                        params.downsample), **{c: r[c] for c in keep}})
    return rows


__all__ = ["DataParams", "full_view", "heldout_rows", "load_grpo_rows", "prompt_messages", "source_dataset",
           "to_grpo_rows"]
