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
"""

from .cache import default_cache_dir, settings_hash
from .clip import Pretrained, TinyCLIPSettings, pretrain_tiny_clip, zero_shot_accuracy
from .clipseg import TinyCLIPSegSettings, build_tiny_clipseg_from_clip, segmentation_scores

DEFAULT_CLIP_STEPS = 600
DEFAULT_CLIPSEG_STEPS = 2000

__all__ = [
    "DEFAULT_CLIPSEG_STEPS", "DEFAULT_CLIP_STEPS", "Pretrained", "TinyCLIPSegSettings", "TinyCLIPSettings",
    "build_tiny_clipseg_from_clip", "default_cache_dir", "pretrain_tiny_clip", "segmentation_scores",
    "settings_hash", "zero_shot_accuracy",
]
