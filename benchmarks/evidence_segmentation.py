"""Evidence for the VLSM adapters: Dice of dense / shallow adapters vs decoder-only vs full fine-tuning of the same
pre-trained tiny CLIPSeg, same step budget, with trainable parameter counts.

    python benchmarks/evidence_segmentation.py [--steps 300] [--seeds 0] [--num-train 600] [--threads 1] [--cache DIR]

The CLIPSeg comes from `adaptune.pretrain` (tiny CLIP pre-trained contrastively, decoder pre-trained on the first 1200
referring-segmentation train rows). Every method then trains on the next `--num-train` rows (new images) with the
segmentation task's loss (Dice 1.5 + BCE 1.0), AdamW wd 1e-3, grad clip 0.5, cosine schedule, and is scored on 200
test rows (mean per-sample Dice / IoU at threshold 0.5). Writes benchmarks/results/evidence_segmentation.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from peft import get_peft_model  # noqa: E402

from adaptune.methods.seg_adapter import SegAdapterConfig, install_grad_forward  # noqa: E402
from adaptune.pretrain import build_tiny_clipseg_from_clip, pretrain_tiny_clip, segmentation_scores  # noqa: E402
from adaptune.pretrain.clipseg import TinyCLIPSegSettings, encode_rows, refseg_rows, train_segmentation  # noqa: E402

# name -> (how to build, learning rate): the VLSM paper's rates for the adapters, common choices for the baselines
METHODS = {
    "decoder only": ("decoder", 1e-3),
    "full fine-tuning": ("full", 1e-4),
    # Widths for the 64-wide tiny CLIPSeg (the defaults, 64 dense / 512 shallow, are the paper's for 512-768 wide ones).
    "dense DA-VLC": (SegAdapterConfig(variant="dense", modality="VLC", r=8), 1e-3),
    "shallow SA-VLC": (SegAdapterConfig(variant="shallow", modality="VLC", r=64), 3e-4),
    "dense DA-V": (SegAdapterConfig(variant="dense", modality="V", r=8), 1e-3),
    "dense DA-VLC + decoder": (SegAdapterConfig(variant="dense", modality="VLC", train_decoder=True, r=8), 1e-3),
}


def prepare(kind, base: torch.nn.Module) -> torch.nn.Module:
    if kind == "decoder":
        for name, param in base.named_parameters():
            param.requires_grad_(name.startswith("decoder."))
        return base
    if kind == "full":
        base.requires_grad_(True)
        install_grad_forward(base)  # upstream CLIPSeg runs its encoders under no_grad
        return base
    return get_peft_model(base, kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-eval", type=int, default=200)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--clip-steps", type=int, default=600)
    parser.add_argument("--clipseg-steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clip = pretrain_tiny_clip(steps=args.clip_steps, cache_dir=args.cache)
    seg = build_tiny_clipseg_from_clip(clip, steps=args.clipseg_steps, cache_dir=args.cache)
    print(f"tiny CLIPSeg: {seg.path} {seg.metrics}")
    settings = TinyCLIPSegSettings()
    size = settings.image_size
    rows = refseg_rows(settings, "train", settings.num_rows + args.num_train)
    train = encode_rows(seg.processor, rows.select(range(settings.num_rows, len(rows))), size)
    test = encode_rows(seg.processor, refseg_rows(settings, "test", args.num_eval), size)

    def fresh() -> torch.nn.Module:
        from transformers import CLIPSegForImageSegmentation

        return CLIPSegForImageSegmentation.from_pretrained(seg.path).eval()

    base = fresh()
    total = sum(p.numel() for p in base.parameters())
    results = [{"method": "pre-trained, no adaptation", "seed": None, "trainable_params": 0,
                **segmentation_scores(base, test)}]
    print(results[0], flush=True)
    for name in args.methods:
        kind, lr = METHODS[name]
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = prepare(kind, fresh())
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            t0 = time.time()
            loss = train_segmentation(model, train, args.steps, lr, args.batch_size, seed, progress=False)
            run = {"method": name, "seed": seed, "lr": lr, "trainable_params": trainable,
                   "trainable_pct": round(100 * trainable / total, 2), "final_loss": loss,
                   **segmentation_scores(model, test), "seconds": round(time.time() - t0, 1)}
            results.append(run)
            print(run, flush=True)

    print(f"\n## Referring segmentation, test Dice / IoU ({args.num_eval} rows, {args.steps} steps, "
          f"{args.num_train} new train rows; CLIPSeg total {total} parameters)")
    print(f"{'method':<28}{'trainable':>11}{'%':>7}{'Dice':>8}{'IoU':>8}")
    for name in ["pre-trained, no adaptation", *args.methods]:
        runs = [r for r in results if r["method"] == name]
        dice = statistics.mean(r["dice"] for r in runs)
        iou = statistics.mean(r["iou"] for r in runs)
        n = runs[0]["trainable_params"]
        print(f"{name:<28}{n:>11}{100 * n / total:>7.2f}{dice:>8.4f}{iou:>8.4f}")
    save("evidence_segmentation", {"settings": vars(args), "clipseg": {"path": str(seg.path), **seg.metrics},
                                   "total_params": total, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
