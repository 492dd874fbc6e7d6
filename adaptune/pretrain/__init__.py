"""Frozen models that know something: a contrastively pre-trained tiny CLIP and a tiny CLIPSeg built on it.

Mask tuning, adapters and their baselines only mean something on a backbone that already solves the task partly.
`pretrain_tiny_clip` trains a tiny CLIP on companion caption pairs until it zero-shots the few-shot colour-shape set
well above chance; `build_tiny_clipseg_from_clip` copies it into a CLIPSeg and pre-trains the decoder on the first
rows of the referring-segmentation set. Both are deterministic, show a tqdm bar, take minutes on 2 CPU cores, and are
cached (atomically) under a hash of their settings.

    from adaptune.pretrain import pretrain_tiny_clip, build_tiny_clipseg_from_clip
    clip = pretrain_tiny_clip()                       # .model .processor .path .metrics["zero_shot_accuracy"]
    seg = build_tiny_clipseg_from_clip(clip)          # .metrics["dice"]
    python -m adaptune.pretrain [--cache DIR]         # builds both, prints the folders to use as model.source

This package registers the model sources "pretrained:clip" and "pretrained:clipseg" (`load_model` builds or reuses the
cached folder).
"""

from pathlib import Path

from ..models.loader import ModelLoadError
from ..registry import SOURCES
from .cache import default_cache_dir, settings_hash
from .clip import Pretrained, TinyCLIPSettings, pretrain_tiny_clip, zero_shot_accuracy
from .clipseg import TinyCLIPSegSettings, build_tiny_clipseg_from_clip, segmentation_scores

DEFAULT_CLIP_STEPS = 600
DEFAULT_CLIPSEG_STEPS = 2000


@SOURCES.register("pretrained")
def _resolve_pretrained(kind: str, seed: int = 0) -> Path:
    """`model.source: pretrained:clip | pretrained:clipseg` -> the cached folder (built once, then reused)."""
    if kind not in ("clip", "clipseg"):
        source = f"pretrained:{kind}" if kind else "pretrained"
        raise ModelLoadError(f"unknown pre-trained tiny model {source!r}; use pretrained:clip or pretrained:clipseg")
    clip = pretrain_tiny_clip(steps=DEFAULT_CLIP_STEPS, seed=seed)
    if kind == "clip":
        return clip.path
    return build_tiny_clipseg_from_clip(clip, steps=DEFAULT_CLIPSEG_STEPS, seed=seed).path

__all__ = [
    "DEFAULT_CLIPSEG_STEPS", "DEFAULT_CLIP_STEPS", "Pretrained", "TinyCLIPSegSettings", "TinyCLIPSettings",
    "build_tiny_clipseg_from_clip", "default_cache_dir", "pretrain_tiny_clip", "segmentation_scores",
    "settings_hash", "zero_shot_accuracy",
]
