"""Companion data sets from the GlyphQA shape family: referring segmentation and few-shot classification.

What:
1. Referring segmentation (`generate_refseg`): several shapes per image, a prompt such as "the red triangle" and a
   binary mask of exactly that shape. Every prompted (colour, shape) pair occurs once in its image, while distractors
   often share the colour or the shape, so both words are needed. Rows:
       id str, image Image (RGB), prompt str, mask Image ("L", 0 or 255; `np.asarray(mask) > 0`),
       color str, shape str, bbox list[int] (x0, y0, x1, y1 exclusive), num_shapes int
2. Few-shot classification (`generate_fewshot`): one main shape per image, class = "colour shape" (12 default classes,
   every colour twice, every shape three times), nuisance in size, position, background tint, pixel noise and small
   unnamed distractor shapes. Rows: id str, image Image (RGB), label ClassLabel, class_name str. Splits: train (a pool
   to draw k-shot subsets from with `sample_k_shot`), validation, test. `class_prompts` gives the text prompts.
3. Caption pairs (`generate_caption_pairs`): image-caption pairs ("a green triangle and a small red circle") over all
   colour x shape combinations, cleaner than the classification images, for contrastive pre-training of a tiny CLIP.

Why: a tiny CLIP pre-trained on (3) zero-shots (2) above chance through the colour and shape words, and few-shot
tuning then helps because the classification images carry noise and unnamed distractors; (1) trains CLIPSeg-style
adapters. Sizes are parameters (defaults: 96 px for segmentation, 64 px for classification).

How:
    from adaptune.data.companions import FewShotConfig, generate_fewshot, sample_k_shot, RefSegConfig, generate_refseg
    seg = generate_refseg(RefSegConfig(seed=0))
    fs = generate_fewshot(FewShotConfig(seed=0))
    four_shot = sample_k_shot(fs["train"], shots=4, seed=0)     # exactly 4 rows per class; nested across shots
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import datasets
import numpy as np
from PIL import Image

from adaptune.data.glyphqa import png_cell
from adaptune.data.shapes import (
    COLORS, DEFAULT_SHAPES, PALETTE, SHAPE_GEOMETRY, Shape, draw_shapes, jitter_rgb, light_background, place_shapes,
    rng_for, shape_mask,
)

SPLITS = ("train", "validation", "test")
SHOTS = (1, 2, 4, 8, 16)
DEFAULT_CLASSES: tuple[str, ...] = (
    "red circle", "red square", "green triangle", "green diamond", "blue circle", "blue triangle",
    "yellow square", "yellow diamond", "purple circle", "purple square", "orange triangle", "orange diamond",
)


def _check(ok: bool, owner: str, name: str, value: Any, why: str) -> None:
    if not ok:
        raise ValueError(f"{owner}.{name}={value!r}: {why}")


def _check_vocab(owner: str, shapes: tuple[str, ...], colors: tuple[str, ...]) -> None:
    for name, vocab, known in (("shapes", shapes, SHAPE_GEOMETRY), ("colors", colors, PALETTE)):
        _check(bool(vocab) and all(v in known for v in vocab) and len(set(vocab)) == len(vocab), owner, name, vocab,
               f"need distinct names from {', '.join(known)}")


def _check_radius(owner: str, name: str, frac: tuple[float, float], shapes: tuple[str, ...]) -> None:
    lo, hi = frac
    bound = max(SHAPE_GEOMETRY[s]["bound"] for s in shapes) * hi
    _check(0 < lo <= hi and bound < 0.5, owner, name, frac,
           f"need 0 < low <= high and a shape that fits the canvas (bounding radius {bound:.2f} of the side >= 0.5)")


def _pixels(frac: tuple[float, float], size: int, rng: np.random.Generator) -> float:
    return float(rng.uniform(frac[0] * size, frac[1] * size))


def _finish(shapes: list[Shape], rng: np.random.Generator, color_jitter: int) -> list[Shape]:
    return [replace(s, rgb=jitter_rgb(PALETTE[s.color], rng, color_jitter)) for s in shapes]


# ----------------------------------------------------------------------------------------------------------------------
# Referring segmentation


@dataclass
class RefSegConfig:
    """Knobs of the referring-segmentation set; sizes are fractions of `image_size` so any canvas works."""

    seed: int = field(default=0, metadata={"help": "Base seed; splits draw from disjoint streams."})
    num_train: int = field(default=2000, metadata={"help": "Images in the train split."})
    num_validation: int = field(default=200, metadata={"help": "Images in the validation split (0 = omit)."})
    num_test: int = field(default=200, metadata={"help": "Images in the test split (0 = omit)."})
    image_size: int = field(default=96, metadata={"help": "Square canvas side in pixels."})
    shapes: tuple[str, ...] = field(default=DEFAULT_SHAPES, metadata={"help": "Shape vocabulary."})
    colors: tuple[str, ...] = field(default=COLORS, metadata={"help": "Colour vocabulary."})
    min_shapes: int = field(default=3, metadata={"help": "Fewest shapes per image (target included)."})
    max_shapes: int = field(default=6, metadata={"help": "Most shapes per image (fewer if they do not fit)."})
    radius_frac: tuple[float, float] = field(default=(0.08, 0.15), metadata={"help": "Radius range / image_size."})
    share_prob: float = field(default=0.6, metadata={"help": "Chance a distractor shares the target colour or shape."})
    targets_per_image: int = field(default=1, metadata={"help": "Rows (distinct prompts) per image, at most."})
    color_jitter: int = field(default=12, metadata={"help": "Max per-channel deviation from the palette."})
    background_jitter: int = field(default=20, metadata={"help": "Background channels in [255-j, 255]."})

    def __post_init__(self) -> None:
        self.shapes, self.colors, self.radius_frac = tuple(self.shapes), tuple(self.colors), tuple(self.radius_frac)
        own = "RefSegConfig"
        _check(self.num_train >= 1, own, "num_train", self.num_train, "need at least one sample in the train split")
        _check(min(self.num_validation, self.num_test) >= 0, own, "num_validation/num_test",
               (self.num_validation, self.num_test), "must be >= 0")
        _check(self.image_size >= 16, own, "image_size", self.image_size, "must be >= 16 px")
        _check_vocab(own, self.shapes, self.colors)
        _check(1 <= self.min_shapes <= self.max_shapes, own, "min_shapes", self.min_shapes,
               f"need 1 <= min_shapes <= max_shapes={self.max_shapes}")
        _check(self.targets_per_image >= 1, own, "targets_per_image", self.targets_per_image, "must be >= 1")
        _check(0.0 <= self.share_prob <= 1.0, own, "share_prob", self.share_prob, "must be in [0, 1]")
        _check_radius(own, "radius_frac", self.radius_frac, self.shapes)

    def split_size(self, split: str) -> int:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]


def _distractor(cfg: RefSegConfig, target: tuple[str, str], rng: np.random.Generator) -> tuple[str, str]:
    """A (kind, color) != target; with `share_prob` it keeps the target's colour or its shape."""
    kind, color = target
    other_kinds = [k for k in cfg.shapes if k != kind]
    other_colors = [c for c in cfg.colors if c != color]
    if rng.random() < cfg.share_prob and (other_kinds or other_colors):
        if other_kinds and (not other_colors or rng.random() < 0.5):
            return str(rng.choice(other_kinds)), color
        return kind, str(rng.choice(other_colors))
    pairs = [(k, c) for k in cfg.shapes for c in cfg.colors if (k, c) != target]
    return pairs[int(rng.integers(len(pairs)))] if pairs else target


def refseg_scene(cfg: RefSegConfig, split: str, index: int) -> tuple[Image.Image, list[Shape], list[Shape]]:
    """(image, all shapes, prompt targets): each target's (colour, shape) is unique in the image."""
    rng = rng_for("refseg", cfg.seed, split, index)
    background = light_background(rng, cfg.background_jitter)
    target = (str(rng.choice(cfg.shapes)), str(rng.choice(cfg.colors)))
    specs = [(*target, _pixels(cfg.radius_frac, cfg.image_size, rng))]
    for _ in range(int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1)) - 1):
        specs.append((*_distractor(cfg, target, rng), _pixels(cfg.radius_frac, cfg.image_size, rng)))
    shapes = _finish(place_shapes(rng, specs, cfg.image_size, gap=3.0), rng, cfg.color_jitter)
    names = [(s.kind, s.color) for s in shapes]
    unique = [s for s in shapes[1:] if names.count((s.kind, s.color)) == 1]
    extra = [unique[int(k)] for k in rng.permutation(len(unique))[: cfg.targets_per_image - 1]]
    targets = [shapes[0], *extra] if names.count(names[0]) == 1 else extra
    return draw_shapes(shapes, cfg.image_size, background), shapes, targets


REFSEG_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "image": datasets.Image(),
    "prompt": datasets.Value("string"),
    "mask": datasets.Image(),
    "color": datasets.Value("string"),
    "shape": datasets.Value("string"),
    "bbox": datasets.List(datasets.Value("int32")),
    "num_shapes": datasets.Value("int32"),
})


def build_refseg_split(cfg: RefSegConfig, split: str, num_images: int | None = None) -> datasets.Dataset:
    """Rows for images 0..n-1 of `split`, one per prompt target (`targets_per_image` at most per image)."""
    n = cfg.split_size(split) if num_images is None else num_images
    rows: list[dict[str, Any]] = []
    for index in range(n):
        image, shapes, targets = refseg_scene(cfg, split, index)
        image_cell = png_cell(image)
        for j, target in enumerate(targets):
            mask = shape_mask(target, cfg.image_size)
            rows.append({
                "id": f"refseg-s{cfg.seed}-{split}-{index:06d}-t{j}", "image": image_cell,
                "prompt": f"the {target.color} {target.kind}", "mask": png_cell(mask), "color": target.color,
                "shape": target.kind, "bbox": list(mask.getbbox() or (0, 0, 0, 0)), "num_shapes": len(shapes),
            })
    columns = {name: [row[name] for row in rows] for name in REFSEG_FEATURES}
    return datasets.Dataset.from_dict(columns, features=REFSEG_FEATURES, split=datasets.NamedSplit(split))


def generate_refseg(cfg: RefSegConfig | None = None) -> datasets.DatasetDict:
    """train / validation / test referring-segmentation splits (empty ones omitted)."""
    cfg = cfg or RefSegConfig()
    return datasets.DatasetDict({s: build_refseg_split(cfg, s) for s in SPLITS if cfg.split_size(s) > 0})


# ----------------------------------------------------------------------------------------------------------------------
# Few-shot classification and caption pairs


@dataclass
class FewShotConfig:
    """Knobs of the few-shot classification set and of its caption pairs for CLIP pre-training."""

    seed: int = field(default=0, metadata={"help": "Base seed; splits draw from disjoint streams."})
    image_size: int = field(default=64, metadata={"help": "Square canvas side in pixels."})
    classes: tuple[str, ...] = field(default=DEFAULT_CLASSES, metadata={"help": "Class names, 'colour shape'."})
    pool_per_class: int = field(default=32, metadata={"help": "Train images per class (the k-shot pool)."})
    validation_per_class: int = field(default=10, metadata={"help": "Validation images per class."})
    test_per_class: int = field(default=50, metadata={"help": "Test images per class."})
    radius_frac: tuple[float, float] = field(default=(0.16, 0.28), metadata={"help": "Main shape radius / size."})
    distractor_frac: tuple[float, float] = field(default=(0.05, 0.08), metadata={"help": "Distractor radius / size."})
    max_distractors: int = field(default=2, metadata={"help": "Small unnamed shapes per image, at most."})
    noise_std: float = field(default=10.0, metadata={"help": "Gaussian pixel noise (0-255 scale)."})
    color_jitter: int = field(default=15, metadata={"help": "Max per-channel deviation from the palette."})
    background_jitter: int = field(default=40, metadata={"help": "Background channels in [255-j, 255]."})
    prompt_template: str = field(default="a photo of a {}.", metadata={"help": "Text prompt per class name."})

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        self.radius_frac, self.distractor_frac = tuple(self.radius_frac), tuple(self.distractor_frac)
        own = "FewShotConfig"
        _check(len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes), own, "classes", self.classes,
               "need at least two distinct class names")
        for name in self.classes:
            parts = name.split()
            _check(len(parts) == 2 and parts[0] in PALETTE and parts[1] in SHAPE_GEOMETRY, own, "classes", name,
                   f"a class must be 'colour shape' with colour in {', '.join(PALETTE)} and shape in "
                   f"{', '.join(SHAPE_GEOMETRY)}")
        _check(self.pool_per_class >= 1, own, "pool_per_class", self.pool_per_class, "need at least one sample")
        _check(min(self.validation_per_class, self.test_per_class) >= 0, own, "validation_per_class/test_per_class",
               (self.validation_per_class, self.test_per_class), "must be >= 0")
        _check(self.image_size >= 16, own, "image_size", self.image_size, "must be >= 16 px")
        _check(self.max_distractors >= 0 and self.noise_std >= 0, own, "max_distractors/noise_std",
               (self.max_distractors, self.noise_std), "must be >= 0")
        _check("{}" in self.prompt_template, own, "prompt_template", self.prompt_template, "needs a '{}' placeholder")
        _check_radius(own, "radius_frac", self.radius_frac, tuple(SHAPE_GEOMETRY))
        _check_radius(own, "distractor_frac", self.distractor_frac, tuple(SHAPE_GEOMETRY))

    def split_size(self, split: str) -> int:
        per_class = {"train": self.pool_per_class, "validation": self.validation_per_class, "test": self.test_per_class}
        return per_class[split] * len(self.classes)


def class_prompts(cfg: FewShotConfig | None = None) -> list[str]:
    """Text prompts in label order, e.g. "a photo of a red circle."."""
    cfg = cfg or FewShotConfig()
    return [cfg.prompt_template.format(name) for name in cfg.classes]


def object_image(
    cfg: FewShotConfig, rng: np.random.Generator, color: str, kind: str, noise_std: float
) -> tuple[Image.Image, list[Shape]]:
    """One main (kind, color) shape plus up to `max_distractors` small ones; returns the image and the distractors."""
    size = cfg.image_size
    background = light_background(rng, cfg.background_jitter)
    specs = [(kind, color, _pixels(cfg.radius_frac, size, rng))]
    for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
        kind_color = (str(rng.choice(DEFAULT_SHAPES)), str(rng.choice(COLORS)))
        specs.append((*kind_color, _pixels(cfg.distractor_frac, size, rng)))
    shapes = _finish(place_shapes(rng, specs, size, gap=2.0), rng, cfg.color_jitter)
    img = draw_shapes(shapes, size, background)
    if noise_std > 0:
        pixels = np.asarray(img, dtype=np.float32) + rng.normal(0.0, noise_std, size=(size, size, 3))
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return img, shapes[1:]


def build_fewshot_split(cfg: FewShotConfig, split: str) -> datasets.Dataset:
    """`split_size(split)` rows, classes interleaved (row i has label i % num_classes)."""
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(cfg.classes)), "class_name": datasets.Value("string"),
    })
    rows: dict[str, list] = {name: [] for name in features}
    for index in range(cfg.split_size(split)):
        label = index % len(cfg.classes)
        color, kind = cfg.classes[label].split()
        img, _ = object_image(cfg, rng_for("fewshot", cfg.seed, split, index), color, kind, cfg.noise_std)
        for name, value in (("id", f"fewshot-s{cfg.seed}-{split}-{index:06d}"), ("image", png_cell(img)),
                            ("label", label), ("class_name", cfg.classes[label])):
            rows[name].append(value)
    return datasets.Dataset.from_dict(rows, features=features, split=datasets.NamedSplit(split))


def generate_fewshot(cfg: FewShotConfig | None = None) -> datasets.DatasetDict:
    """train (the k-shot pool) / validation / test classification splits (empty ones omitted)."""
    cfg = cfg or FewShotConfig()
    return datasets.DatasetDict({s: build_fewshot_split(cfg, s) for s in SPLITS if cfg.split_size(s) > 0})


def sample_k_shot(ds: datasets.Dataset, shots: int, seed: int = 0, label_column: str = "label") -> datasets.Dataset:
    """Exactly `shots` rows per class, seeded; for one seed the subsets are nested (the 2-shot rows are in 4-shot)."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    labels = np.asarray(ds[label_column])
    names = ds.features[label_column].names if hasattr(ds.features[label_column], "names") else None
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1234]))
    chosen: list[int] = []
    for label in sorted(set(labels.tolist())):
        pool = np.flatnonzero(labels == label)
        if len(pool) < shots:
            name = names[label] if names else label
            raise ValueError(f"class {name!r} has only {len(pool)} examples, cannot draw {shots} shots")
        chosen.extend(int(i) for i in pool[rng.permutation(len(pool))[:shots]])
    return ds.select(chosen)


def generate_caption_pairs(
    cfg: FewShotConfig | None = None, num_pairs: int = 5000, num_validation: int = 500, noise_std: float = 0.0
) -> datasets.DatasetDict:
    """Image-caption pairs over every colour x shape (not only the classes), distractors named in the caption."""
    cfg = cfg or FewShotConfig()
    if num_pairs < 1 or num_validation < 0:
        raise ValueError(f"need num_pairs >= 1 and num_validation >= 0, got {num_pairs} and {num_validation}")
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "caption": datasets.Value("string")})
    out = {}
    for split, n in (("train", num_pairs), ("validation", num_validation)):
        rows: dict[str, list] = {name: [] for name in features}
        for index in range(n):
            rng = rng_for("clip-pairs", cfg.seed, split, index)
            color, kind = str(rng.choice(COLORS)), str(rng.choice(DEFAULT_SHAPES))
            img, others = object_image(cfg, rng, color, kind, noise_std)
            caption = f"a {color} {kind}" + "".join(
                f"{' and' if i == len(others) - 1 else ','} a small {s.color} {s.kind}" for i, s in enumerate(others))
            rows["id"].append(f"clip-s{cfg.seed}-{split}-{index:06d}")
            rows["image"].append(png_cell(img))
            rows["caption"].append(caption)
        if n:
            out[split] = datasets.Dataset.from_dict(rows, features=features, split=datasets.NamedSplit(split))
    return datasets.DatasetDict(out)
