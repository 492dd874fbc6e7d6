"""Checking and converting inputs before they reach a processor.

Images (PIL, bytes, a path, or a `datasets` image dict) are converted to 8-bit RGB as documented below or rejected
with an `InputError` naming the row and the problem; questions must be non-empty text of bounded length.

Conversions (documented behaviour):
- grayscale (L, 1), palette (P), CMYK, YCbCr, HSV, LAB -> RGB via PIL's converter;
- images with alpha (RGBA, LA, P with transparency) are composited on white;
- 16/32-bit integer (I;16, I) and float (F) images are rescaled from their own min/max to 0..255, then RGB;
- images smaller than `min_side` on a side are upscaled (bicubic) so the shorter side is `min_side`.
Rejections: unreadable or truncated files, decompression bombs (more than `max_pixels` pixels, checked from the
header before any pixel is decoded; PIL's own bomb error is caught too), aspect ratios above `max_aspect` (the
Qwen-VL processors refuse above 200), empty/whitespace-only questions, questions longer than `max_question_chars`,
bytes that are not UTF-8, missing columns.

This is the ONE image entry point: the downsampler (`adaptune.budget.resolution.downsample`), the two-turn inference
loop, the GRPO data and environment and the VQA task all call `prepare_image`, so an image is converted the same way
(never a plain `.convert("RGB")`, which turns 16-bit images almost white and transparent pixels black) and a bad one
is refused with its row wherever it enters.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


class InputError(ValueError):
    """A data row that cannot be used; the message names the row and the problem."""


@dataclass(frozen=True)
class InputPolicy:
    min_side: int = 32
    max_aspect: float = 200.0
    max_question_chars: int = 2000
    max_pixels: int = 89_478_485  # PIL's own default bomb limit (Image.MAX_IMAGE_PIXELS)


def _where(row: Any) -> str:
    return f"row {row}" if row is not None else "input"


def _check_pixels(width: int, height: int, where: str, policy: InputPolicy) -> None:
    if width * height > policy.max_pixels:
        raise InputError(f"{where}: image {width}x{height} has {width * height:,} pixels, above the limit of "
                         f"{policy.max_pixels:,} (InputPolicy.max_pixels; a decompression bomb or an image to "
                         "downscale first)")


def _open(obj: Any, where: str, policy: InputPolicy = InputPolicy()) -> Image.Image:
    if isinstance(obj, Image.Image):
        _check_pixels(*obj.size, where, policy)
        return obj
    if isinstance(obj, dict) and ("bytes" in obj or "path" in obj):  # datasets.Image(decode=False) cell
        obj = obj.get("bytes") or obj.get("path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            if isinstance(obj, (bytes, bytearray)):
                image = Image.open(io.BytesIO(obj))
            elif isinstance(obj, (str, Path)):
                image = Image.open(obj)
            else:
                raise InputError(f"{where}: image must be a PIL image, bytes or a path, got {type(obj).__name__}")
            _check_pixels(*image.size, where, policy)  # from the header: nothing decoded yet
            image.load()  # forces decoding: truncated files fail here, not later inside a processor
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{where}: decompression bomb refused ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{where}: unreadable or corrupt image ({exc.__class__.__name__}: {exc})") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB following the documented conversions."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(arr.round().astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def prepare_image(obj: Any, row: Any = None, policy: InputPolicy = InputPolicy()) -> Image.Image:
    """Open, check and convert one image (see the module docstring for what is converted and what is refused)."""
    where = _where(row)
    image = _open(obj, where, policy)
    try:
        image = to_rgb(image)
    except (ValueError, OSError) as exc:  # a mode PIL cannot convert (premultiplied "La", say)
        raise InputError(f"{where}: cannot convert a {image.mode!r} image to RGB ({exc})") from None
    w, h = image.size
    if w < 1 or h < 1:
        raise InputError(f"{where}: empty image ({w}x{h})")
    aspect = max(w, h) / min(w, h)
    if aspect > policy.max_aspect:
        raise InputError(f"{where}: image {w}x{h} has aspect ratio {aspect:.0f}, above the supported "
                         f"{policy.max_aspect:.0f}; crop or pad it first")
    if min(w, h) < policy.min_side:
        scale = policy.min_side / min(w, h)
        image = image.resize((max(policy.min_side, round(w * scale)), max(policy.min_side, round(h * scale))),
                             Image.BICUBIC)
    return image


def check_dataset_images(ds: Any, columns: tuple[str, ...] = ("image",), policy: InputPolicy = InputPolicy()) -> None:
    """Open and check every image of a `datasets.Dataset` (read undecoded) with `prepare_image`, so a corrupt file or
    a decompression bomb in a dataset folder is an `InputError` naming the row's `id` (or index) when the rows are
    loaded, not a PIL stack trace inside a data loader."""
    import datasets

    for column in columns:
        if column not in ds.column_names or not isinstance(ds.features[column], datasets.Image):
            continue
        raw = ds.cast_column(column, datasets.Image(decode=False))
        keep = [column] + (["id"] if "id" in raw.column_names else [])
        for index, row in enumerate(raw.select_columns(keep)):
            if row[column] is not None:
                row_id = row.get("id")
                prepare_image(row[column], row_id if row_id is not None else index, policy)


def prepare_question(text: Any, row: Any = None, policy: InputPolicy = InputPolicy()) -> str:
    where = _where(row)
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{where}: question is not valid UTF-8 (byte {exc.start})") from None
    if not isinstance(text, str):
        raise InputError(f"{where}: question must be text, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{where}: question is empty")
    if len(text) > policy.max_question_chars:
        raise InputError(f"{where}: question has {len(text)} characters, above the limit of "
                         f"{policy.max_question_chars} (InputPolicy.max_question_chars)")
    return text.strip()


def prepare_vqa_row(row: dict[str, Any], index: Any = None, policy: InputPolicy = InputPolicy(),
                    required: tuple[str, ...] = ("image", "question", "answer")) -> dict[str, Any]:
    """A checked copy of a VQA row: RGB image, clean question, answer as text."""
    where = _where(row.get("id", index) if isinstance(row, dict) else index)
    missing = [c for c in required if c not in row or row[c] is None]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)}")
    out = dict(row)
    out["image"] = prepare_image(row["image"], where.removeprefix("row "), policy)
    out["question"] = prepare_question(row["question"], where.removeprefix("row "), policy)
    if "answer" in required:
        answer = row["answer"]
        if isinstance(answer, (bytes, bytearray)):
            answer = prepare_question(answer, where.removeprefix("row "), policy)
        out["answer"] = str(answer).strip()
        if not out["answer"]:
            raise InputError(f"{where}: answer is empty")
    return out
