"""Where VQA rows come from: one resolver for every VQA task, GRPO, resolution labelling and evaluation.

What: `load_source(spec, split, num, key=...)` turns a recipe's dataset spec into a `datasets.Dataset` with the
canonical columns `image`, `question`, `answer` and, when the source has them, `kind`, `id`, `label`,
`full_image`, `target_width`, `target_height`. A spec is a plain string or a mapping:

    dataset: glyphqa                                   # generated in code (the caller's generator)
    dataset: /data/my_vqa                              # a `save_to_disk` folder, or a folder of data files
    dataset: /data/train-*.parquet                     # parquet / JSON lines / JSON / CSV files or a glob
    dataset: Senqiao/VisionThink-General-Train         # a hub id (datasets.load_dataset; cached copies offline)
    dataset: {path: /data/vt, schema: visionthink}     # a shipped column mapping
    dataset: {path: rows.jsonl, columns: {image: img, question: q, answer: a}, split: train}

Why: the user's own data rarely has adaptune's column names, and real image sets do not fit in RAM as decoded
images. Everything here goes through `datasets` (`load_from_disk` / `load_dataset`), so rows stay Arrow-backed
(memory-mapped for files on disk) with images kept encoded; callers decode them per batch.

How the columns are found: `columns` maps a role to a source column (`info.tgt_width` reads a struct field); a
role not mapped takes the first candidate of the `schema` (`adaptune`, the default: the role's own name;
`visionthink`: VisionThink's training sets, see `SCHEMAS`). A list of images (VisionThink's `images`) gives its
first image; a string image column is a file path, relative paths resolve against `image_root` (default: the
data file's folder); a boolean `kind` column (VisionThink's `info.use_tool`) becomes "fine" (needs the full image)
/ "coarse". A mapped column that is missing, a required role that cannot be found, a split that does not exist and
a hub id that cannot be reached each raise `DatasetSpecError` naming the recipe key and the column, split or id.
"""

from __future__ import annotations

import glob
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import RecipeError, validate_params

log = logging.getLogger("adaptune")

GENERATED = "glyphqa"
ROLES = ("image", "question", "answer", "kind", "qtype", "id", "label", "full_image", "target_width",
         "target_height")
REQUIRED = ("image", "question", "answer")
IMAGE_ROLES = ("image", "full_image")
DATA_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")

SCHEMAS: dict[str, dict[str, tuple[str, ...]]] = {
    "adaptune": {role: (role,) for role in ROLES},
    # VisionThink's training sets (Senqiao/VisionThink-{General,Smart}-{Train,Val}, read by its verl loader):
    # `images` (the image; a list in some exports: the first is used), `problem` (the question), `original_answer`
    # (the reference its tool-run rewards score against; `solution` in the other sets), `info` (a struct with the
    # per-row target size `tgt_width` / `tgt_height` and `use_tool`: whether the question needs the full image),
    # `doc_id` (the row's id).
    "visionthink": {
        "image": ("images", "image"), "question": ("problem", "question"),
        "answer": ("original_answer", "solution", "answer"), "kind": ("info.use_tool", "kind"),
        "id": ("doc_id", "id"), "label": ("label",), "full_image": ("full_image",),
        "target_width": ("info.tgt_width",), "target_height": ("info.tgt_height",),
    },
}


class DatasetSpecError(RecipeError):
    """A dataset spec that cannot be loaded; the message names the recipe key and the column, split, file or id."""


@dataclass
class DatasetSpec:
    """A dataset in a recipe (`task.params.dataset`, `grpo.data.dataset`, `grpo.eval.dataset`)."""

    path: str = GENERATED
    """"glyphqa", a `save_to_disk` folder, a folder of data files, a data file or glob (.parquet, .jsonl, .json,
    .csv), or a hub dataset id."""
    split: str | None = None
    """The split to read; default: the split the caller asks for (train, validation, test). A source without a
    validation split serves it from test (and test from validation); a source with a single split serves every
    split from it."""
    name: str | None = None
    """A hub dataset's configuration name."""
    columns: dict[str, str] = field(default_factory=dict)
    """Role -> source column (roles: image, question, answer, kind, id, label, full_image, target_width,
    target_height); `a.b` reads field b of struct column a."""
    schema: str = "adaptune"
    """A shipped column mapping for roles not in `columns`: "adaptune" (the roles' own names) or "visionthink"."""
    image_root: str | None = None
    """Folder that relative image paths resolve against (default: the data file's folder)."""

    def __post_init__(self) -> None:
        if self.schema not in SCHEMAS:
            raise ValueError(f"schema: unknown {self.schema!r} (known: {', '.join(SCHEMAS)})")
        unknown = sorted(set(self.columns) - set(ROLES))
        if unknown:
            raise ValueError(f"columns.{unknown[0]}: unknown role (known: {', '.join(ROLES)})")
        if self.path == GENERATED and (self.columns or self.schema != "adaptune" or self.name or self.image_root):
            raise ValueError("columns, schema, name and image_root apply to loaded data, not to generated glyphqa")


def parse_spec(value: Any, key: str) -> DatasetSpec:
    """A spec from a recipe value: a string (the path) or a mapping of `DatasetSpec` fields."""
    if isinstance(value, DatasetSpec):
        return value
    if isinstance(value, (str, Path)):
        if not str(value).strip():
            raise DatasetSpecError(f"{key}: empty dataset")
        return DatasetSpec(path=str(value))
    if isinstance(value, Mapping):
        return validate_params(dict(value), DatasetSpec, key)
    raise DatasetSpecError(f"{key}: a dataset is a name, a path or a mapping (path, split, columns, schema, ...), "
                           f"got {type(value).__name__}")


def is_generated(value: Any) -> bool:
    """Whether `value` names the generated GlyphQA set (its callers build it with their own generator options)."""
    return parse_spec(value, "dataset").path == GENERATED


def load_source(value: Any, split: str, num: int | None = None, key: str = "dataset", seed: int = 0,
                generate: Callable[[str, int | None], Any] | None = None) -> Any:
    """The rows of `value` (a spec) for `split`, at most `num` of them, with canonical columns (module docstring).

    `generate(split, num)` builds the generated set; default `build_split(GlyphQAConfig(seed=seed), split, num)`.
    """
    spec = parse_spec(value, key)
    if spec.path == GENERATED:
        if generate is not None:
            return generate(spec.split or split, num)
        from .glyphqa import GlyphQAConfig, build_split

        return build_split(GlyphQAConfig(seed=seed), spec.split or split, num_images=num)
    data, base = _open(spec, spec.split or split, key)
    if num is not None:
        data = data.select(range(min(num, len(data))))
    return _canonical(data, spec, key, Path(spec.image_root).expanduser() if spec.image_root else base)


# -- opening ---------------------------------------------------------------------------------------------------------
def _open(spec: DatasetSpec, split: str, key: str) -> tuple[Any, Path | None]:
    """The raw `datasets.Dataset` of `split` and the folder relative image paths resolve against."""
    import datasets

    path = Path(spec.path).expanduser()
    if path.is_dir():
        if any((path / marker).exists() for marker in SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(path))
        else:  # a folder of data files (a hub-style repo copy with a dataset card, parquet shards, ...)
            loaded = _call(lambda: datasets.load_dataset(str(path), spec.name), key, f"folder {spec.path!r}")
        return _pick_split(loaded, split, key, spec.path), path
    suffix = "".join(path.suffixes[-1:]).lower()
    if path.is_file() or suffix in DATA_FILE_BUILDERS or glob.has_magic(spec.path):
        files = sorted(glob.glob(str(path)))
        if not files:
            raise DatasetSpecError(f"{key}: no file matches {spec.path!r}")
        builder = DATA_FILE_BUILDERS.get(Path(files[0]).suffix.lower())
        if builder is None:
            raise DatasetSpecError(f"{key}: {files[0]!r}: unknown data file type (known: "
                                   f"{', '.join(sorted(DATA_FILE_BUILDERS))})")
        loaded = _call(lambda: datasets.load_dataset(builder, data_files=files), key, f"files {spec.path!r}")
        return _pick_split(loaded, split, key, spec.path), Path(files[0]).parent
    local = spec.path.startswith((".", "~", "/")) or (path.parent != Path(".") and path.parent.is_dir())
    if HUB_ID.match(spec.path) and not local:
        loaded = _call(lambda: datasets.load_dataset(spec.path, spec.name), key, f"hub dataset {spec.path!r}",
                       hub_id=spec.path)
        return _pick_split(loaded, split, key, spec.path), None
    if local:
        raise DatasetSpecError(f"{key}: {spec.path!r} does not exist (no such folder or file)")
    raise DatasetSpecError(f"{key}: {spec.path!r} is not 'glyphqa', an existing folder or file, a data file pattern "
                           "(.parquet, .jsonl, .json, .csv) or a hub dataset id")


def _call(load: Callable[[], Any], key: str, what: str, hub_id: str | None = None) -> Any:
    try:
        return load()
    except Exception as exc:  # datasets raises many kinds (DatasetNotFoundError, ConnectionError, ArrowInvalid...)
        detail = " ".join(str(exc).split())[:300]
        hint = (" With no network (or HF_HUB_OFFLINE=1) only a dataset already in the local cache loads: download "
                f"it where there is network (`hf download --repo-type dataset {hub_id} --local-dir DIR`) and set "
                f"{key} to DIR.") if hub_id else ""
        raise DatasetSpecError(f"{key}: cannot load {what} ({exc.__class__.__name__}: {detail}).{hint}") from None


def _pick_split(loaded: Any, split: str, key: str, where: str) -> Any:
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split in loaded:
        return loaded[split]
    stand_in = {"validation": "test", "test": "validation"}.get(split)
    if stand_in in loaded:  # a held-out split serves as the other held-out split
        log.info("%s: %s has no %r split; using %r", key, where, split, stand_in)
        return loaded[stand_in]
    if len(loaded) == 1:
        only = next(iter(loaded))
        log.info("%s: %s has one split (%s); using it for %r", key, where, only, split)
        return loaded[only]
    raise DatasetSpecError(f"{key}: {where} has no split {split!r} (has {', '.join(loaded)}); set {key}.split")


# -- columns ---------------------------------------------------------------------------------------------------------
def _has(features: Any, column: str) -> bool:
    head, _, field_name = column.partition(".")
    if head not in features:
        return False
    return not field_name or (isinstance(features[head], dict) and field_name in features[head])


def resolve_columns(features: Any, spec: DatasetSpec, key: str) -> dict[str, str]:
    """Role -> source column for `features` (a `datasets.Features`), per `spec.columns` then `spec.schema`."""
    names = ", ".join(features)
    found: dict[str, str] = {}
    for role, column in spec.columns.items():
        if not _has(features, column):
            raise DatasetSpecError(f"{key}.columns.{role}: column {column!r} is not in the dataset (columns: {names})")
        found[role] = column
    for role, candidates in SCHEMAS[spec.schema].items():
        if role not in found:
            hit = next((c for c in candidates if _has(features, c)), None)
            if hit is not None:
                found[role] = hit
    for role in REQUIRED:
        if role not in found:
            tried = " / ".join(SCHEMAS[spec.schema][role])
            raise DatasetSpecError(f"{key}: no {role} column (looked for {tried}; columns: {names}); map one with "
                                   f"{key}.columns.{role}")
    return found


def _is_image_list(feature: Any) -> bool:
    import datasets

    return isinstance(feature, (datasets.List, datasets.Sequence, list)) and _inner(feature) is not None


def _inner(feature: Any) -> Any:
    import datasets

    inner = feature[0] if isinstance(feature, list) else getattr(feature, "feature", None)
    return inner if isinstance(inner, datasets.Image) else None


def _canonical(data: Any, spec: DatasetSpec, key: str, base: Path | None) -> Any:
    """`data` with the canonical columns only; zero-copy when the columns only need renaming."""
    import datasets

    found = resolve_columns(data.features, spec, key)
    feats = data.features
    simple = all("." not in c for c in found.values()) and all(
        isinstance(feats[found[r]], datasets.Image) for r in IMAGE_ROLES if r in found) and not (
        "kind" in found and getattr(feats[found["kind"]], "dtype", None) == "bool")
    if simple and len(set(found.values())) == len(found):
        out = data.select_columns(list(found.values()))
        return out.rename_columns({c: r for r, c in found.items() if c != r})
    out_features = datasets.Features({
        role: (datasets.Image() if role in IMAGE_ROLES else datasets.Value("int64") if role.startswith("target_")
               else datasets.Value("string")) for role in found})
    raw = data
    for role in IMAGE_ROLES:  # read undecoded: a bad file is reported by the validator with its row, later
        column = found.get(role)
        if column is not None and isinstance(feats[column], datasets.Image):
            raw = raw.cast_column(column, datasets.Image(decode=False))
        elif column is not None and _is_image_list(feats[column]):
            raw = raw.cast_column(column, datasets.List(datasets.Image(decode=False)))
    tops = sorted({c.partition(".")[0] for c in found.values()})

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role, column in found.items():
            head, _, field_name = column.partition(".")
            value = row[head]
            if field_name:
                value = None if value is None else value.get(field_name)
            if role in IMAGE_ROLES:
                value = _image_cell(value, base)
            elif role == "kind" and isinstance(value, bool):
                value = "fine" if value else "coarse"
            elif role.startswith("target_"):
                value = None if value is None else int(value)
            elif value is not None:
                value = str(value)
            out[role] = value
        return out

    return raw.select_columns(tops).map(convert, remove_columns=tops, features=out_features, writer_batch_size=256,
                                        desc=f"{key}: columns")


def _image_cell(value: Any, base: Path | None) -> Any:
    """One image cell as `datasets.Image` accepts it: the first of a list, a path resolved against `base`."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return {"path": str(path), "bytes": None}
    return value


# -- pixel normalisation -----------------------------------------------------------------------------------------------
def fit_pixels(image: Image.Image, min_pixels: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """VisionThink's pixel normalisation: scale (aspect kept, LANCZOS) so that width x height is at most
    `max_pixels` and at least `min_pixels`; an image already in range is returned as is.

        fit_pixels(Image.new("RGB", (4000, 3000)), max_pixels=1024 * 1024).size   # (1182, 886)
    """
    w, h = image.size
    area = w * h
    for limit, outside in ((max_pixels, lambda a, m: a > m), (min_pixels, lambda a, m: a < m)):
        if limit is not None and outside(area, limit):
            scale = math.sqrt(limit / area)
            w, h = max(1, int(w * scale)), max(1, int(h * scale))
            area = w * h
    return image if (w, h) == image.size else image.resize((w, h), Image.Resampling.LANCZOS)


def check_pixel_range(min_pixels: int | None, max_pixels: int | None) -> None:
    """Refuse a pixel range that cannot be met (raised as ValueError, which `validate_params` names)."""
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be null or a positive pixel count, got {value!r}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) is above max_pixels ({max_pixels})")


__all__ = ["DatasetSpec", "DatasetSpecError", "ROLES", "SCHEMAS", "check_pixel_range", "fit_pixels", "is_generated",
           "load_source", "parse_spec", "resolve_columns"]
