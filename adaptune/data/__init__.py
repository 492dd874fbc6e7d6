"""Synthetic data sets for adaptune: GlyphQA (resolution-sensitive VQA) and its companion sets.

- `glyphqa`: shapes + one small digit on a patch centre; coarse questions answerable at half resolution, fine
  (digit) questions only at full resolution. `generate_glyphqa`, `heldout_mix`.
  (Half resolution is `adaptune.budget.downsample`, the one downsampler.)
- `companions`: referring segmentation (`generate_refseg`), few-shot colour-shape classification
  (`generate_fewshot`, `sample_k_shot`, `class_prompts`) and CLIP caption pairs (`generate_caption_pairs`).
- `shapes`, `glyphs`: the shared drawing kit (palette, geometry, seeding, fonts shipped with matplotlib).

Build everything on disk with `python datasets/build_glyphqa.py --out DIR` (GlyphQA as parquet shards plus a dataset
card, `adaptune.data.hub_folder`; `datasets.load_dataset("DIR/glyphqa")` reads it).
"""

from adaptune.data.companions import (
    DEFAULT_CLASSES,
    SHOTS,
    FewShotConfig,
    RefSegConfig,
    class_prompts,
    generate_caption_pairs,
    generate_fewshot,
    generate_refseg,
    sample_k_shot,
)
from adaptune.data.glyphqa import (
    BINDING_QTYPES,
    COARSE_QTYPES,
    DEFAULT_COARSE_QTYPES,
    FINE_QTYPES,
    QTYPES,
    GlyphQAConfig,
    build_split,
    explode_questions,
    generate_glyphqa,
    heldout_mix,
    make_sample,
)

__all__ = [
    "BINDING_QTYPES",
    "COARSE_QTYPES",
    "DEFAULT_COARSE_QTYPES",
    "DEFAULT_CLASSES",
    "FINE_QTYPES",
    "QTYPES",
    "SHOTS",
    "FewShotConfig",
    "GlyphQAConfig",
    "RefSegConfig",
    "build_split",
    "class_prompts",
    "explode_questions",
    "generate_caption_pairs",
    "generate_fewshot",
    "generate_glyphqa",
    "generate_refseg",
    "heldout_mix",
    "make_sample",
    "sample_k_shot",
]
