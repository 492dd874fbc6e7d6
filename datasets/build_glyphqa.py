"""Build GlyphQA and its companion sets and save them with `DatasetDict.save_to_disk`.

What: writes DIR/glyphqa, DIR/glyphqa_mix (held-out evaluation mix), DIR/refseg, DIR/fewshot, DIR/clip_pairs and
DIR/glyphqa_calibration.png, printing row counts per split, kind and qtype.
Why: training recipes and notebooks load a fixed on-disk copy (`datasets.load_from_disk`) instead of regenerating.
How (from the repo root; no __init__.py here, so this folder never shadows Hugging Face `datasets`):
    python datasets/build_glyphqa.py --out data/glyphqa --num-images 5000 --seed 0
    python datasets/build_glyphqa.py --out /tmp/gq --num-images 200 --only glyphqa
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == REPO_ROOT / "datasets":
    sys.path[0] = str(REPO_ROOT)  # run as a script: import adaptune from the checkout, never shadow HF `datasets`

from adaptune.data import (  # noqa: E402
    FewShotConfig,
    GlyphQAConfig,
    RefSegConfig,
    generate_caption_pairs,
    generate_fewshot,
    generate_glyphqa,
    generate_refseg,
    heldout_mix,
)
from adaptune.eval.calibration import calibration  # noqa: E402

PARTS = ("glyphqa", "refseg", "fewshot", "clip_pairs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-images", type=int, default=5000, help="GlyphQA train images")
    parser.add_argument("--num-validation", type=int, default=500, help="GlyphQA validation images")
    parser.add_argument("--num-test", type=int, default=500, help="GlyphQA test images")
    parser.add_argument("--fine-fraction", type=float, default=0.5, help="fine primary questions in GlyphQA splits")
    parser.add_argument("--mix-fine-fraction", type=float, default=0.3, help="fine share of the held-out mix")
    parser.add_argument("--digit-px", type=int, default=7)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--refseg-images", type=int, default=2000)
    parser.add_argument("--fewshot-pool", type=int, default=32, help="train images per class (k-shot pool)")
    parser.add_argument("--clip-pairs", type=int, default=5000)
    parser.add_argument("--only", choices=PARTS, action="append", help="build only these parts (repeatable)")
    return parser.parse_args(argv)


def _summary(name: str, dsd, columns: tuple[str, ...]) -> None:
    for split, ds in dsd.items():
        present = [col for col in columns if col in ds.column_names]
        counts = " ".join(f"{col}={dict(sorted(Counter(ds[col]).items()))}" for col in present)
        print(f"{name:12s} {split:10s} rows={len(ds):6d} {counts}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parts = set(args.only or PARTS)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if "glyphqa" in parts:
        cfg = GlyphQAConfig(seed=args.seed, num_images=args.num_images, num_validation=args.num_validation,
                            num_test=args.num_test, fine_fraction=args.fine_fraction, digit_px=args.digit_px,
                            image_size=args.image_size)
        glyphqa = generate_glyphqa(cfg)
        glyphqa.save_to_disk(str(args.out / "glyphqa"))
        _summary("glyphqa", glyphqa, ("kind", "qtype"))
        if args.num_test > 0:
            mix = heldout_mix(cfg, fine_fraction=args.mix_fine_fraction)
            mix.save_to_disk(str(args.out / "glyphqa_mix"))
            _summary("glyphqa_mix", {"test": mix}, ("kind", "qtype"))
        calibration(cfg, path=args.out / "glyphqa_calibration.png")
    if "refseg" in parts:
        refseg = generate_refseg(RefSegConfig(seed=args.seed, num_train=args.refseg_images))
        refseg.save_to_disk(str(args.out / "refseg"))
        _summary("refseg", refseg, ("shape", "color"))
    if "fewshot" in parts:
        fewshot = generate_fewshot(FewShotConfig(seed=args.seed, pool_per_class=args.fewshot_pool))
        fewshot.save_to_disk(str(args.out / "fewshot"))
        _summary("fewshot", fewshot, ("class_name",))
    if "clip_pairs" in parts:
        pairs = generate_caption_pairs(FewShotConfig(seed=args.seed), num_pairs=args.clip_pairs)
        pairs.save_to_disk(str(args.out / "clip_pairs"))
        _summary("clip_pairs", pairs, ())
    print(f"built {', '.join(sorted(parts))} in {time.perf_counter() - start:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
