"""`python -m adaptune.pretrain [--cache DIR] [--clip-steps N] [--clipseg-steps N]`: build (or find) the pre-trained
tiny CLIP and CLIPSeg, print their folders (usable as a recipe's `model.source`) and their baseline metrics."""

from __future__ import annotations

import argparse
import json

from . import DEFAULT_CLIP_STEPS, DEFAULT_CLIPSEG_STEPS, build_tiny_clipseg_from_clip, pretrain_tiny_clip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m adaptune.pretrain", description=__doc__)
    parser.add_argument("--cache", default=None, help="cache folder (default: $ADAPTUNE_CACHE/pretrain)")
    parser.add_argument("--clip-steps", type=int, default=DEFAULT_CLIP_STEPS)
    parser.add_argument("--clipseg-steps", type=int, default=DEFAULT_CLIPSEG_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default; 1 is much faster on a busy shared CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    clip = pretrain_tiny_clip(steps=args.clip_steps, cache_dir=args.cache, seed=args.seed)
    seg = build_tiny_clipseg_from_clip(clip, steps=args.clipseg_steps, cache_dir=args.cache, seed=args.seed)
    print(json.dumps({"tiny_clip": {"path": str(clip.path), **clip.metrics},
                      "tiny_clipseg": {"path": str(seg.path), **seg.metrics}}, indent=2))


if __name__ == "__main__":
    main()
