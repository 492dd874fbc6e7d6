"""Inference cost of the weight-side adapters: R-AMT mask tuning (merged and not) and VLSM seg adapters vs their base.

    python benchmarks/bench_mask_seg.py [--image-size 224] [--patch 16] [--hidden 192] [--layers 6] [--batch 8]
                                        [--repeats 7] [--threads 1]

One process, cases timed interleaved, median of per-repeat ratios to the base model:
- CLIP image tower: base; mask tuning before merging (W * mask computed every forward); mask tuning after
  `merge_and_unload()` (target ratio 1.00: the masks are baked into the weights).
- CLIPSeg (text prompt -> mask): base; dense adapters DA-VLC; shallow adapters SA-VLC (adapters stay unmerged).
Writes benchmarks/results/bench_mask_seg.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import compare, print_table, save  # noqa: E402
from peft import get_peft_model  # noqa: E402

from adaptune.methods.mask_tuning import MaskTuningConfig, MaskTuningLayer  # noqa: E402
from adaptune.methods.seg_adapter import SegAdapterConfig  # noqa: E402
from adaptune.models import build_tiny  # noqa: E402


def _vision(args: argparse.Namespace) -> dict:
    return {"hidden_size": args.hidden, "intermediate_size": 4 * args.hidden, "num_hidden_layers": args.layers,
            "num_attention_heads": max(1, args.hidden // 64), "patch_size": args.patch}


def bench_mask_tuning(args: argparse.Namespace) -> dict:
    base, _ = build_tiny("clip", image_size=args.image_size, vision=_vision(args))
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size)
    adapted = get_peft_model(copy.deepcopy(base), MaskTuningConfig()).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # mask about 3% of the weights, as R-AMT ends up doing
        for module in adapted.modules():
            if isinstance(module, MaskTuningLayer):
                scores = module.amt_scores["default"]
                scores[torch.rand(scores.shape, generator=gen) < 0.03] = 0.0
    merged = copy.deepcopy(adapted).merge_and_unload().eval()
    with torch.no_grad():
        same = torch.equal(adapted.get_image_features(pixel_values=pixels).pooler_output,
                           merged.get_image_features(pixel_values=pixels).pooler_output)
    n_masked = sum(m.amt_scores["default"].numel() for m in adapted.modules() if isinstance(m, MaskTuningLayer))

    def run(model):
        def fn():
            with torch.no_grad():
                model.get_image_features(pixel_values=pixels)
        return fn

    rows = compare({"base CLIP image tower": run(base), "mask tuning, unmerged": run(adapted),
                    "mask tuning, merged": run(merged)}, baseline="base CLIP image tower", repeats=args.repeats)
    print_table("R-AMT mask tuning: image-tower forward", rows, "base CLIP image tower")
    print(f"merged outputs identical to the adapted model: {same}; masked weights: {n_masked}")
    return {"rows": rows, "merged_equals_adapted": same, "masked_weights": n_masked}


def bench_seg_adapters(args: argparse.Namespace) -> dict:
    base, processor = build_tiny("clipseg", image_size=args.image_size, vision=_vision(args),
                                 text={"hidden_size": args.hidden, "intermediate_size": 4 * args.hidden,
                                       "num_attention_heads": max(1, args.hidden // 64)},
                                 extract_layers=tuple(range(1, args.layers, 2))[:3] or (1,))
    prompts = ["the red triangle", "the blue circle"] * (args.batch // 2)
    pixels = torch.randn(len(prompts), 3, args.image_size, args.image_size)
    tokens = processor.tokenizer(prompts, padding=True, return_tensors="pt")
    inputs = {"pixel_values": pixels, **tokens}
    cases = {"base CLIPSeg": base.eval()}
    params = {}
    dense_r, shallow_r = max(4, args.hidden // 8), args.hidden  # the paper's ratios at this width (its 64 / 512 at 512)
    for name, config in (("dense adapters DA-VLC", SegAdapterConfig(variant="dense", modality="VLC", r=dense_r)),
                         ("shallow adapters SA-VLC", SegAdapterConfig(variant="shallow", modality="VLC", r=shallow_r))):
        model = get_peft_model(copy.deepcopy(base), config).eval()
        cases[name] = model
        params[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def run(model):
        def fn():
            with torch.no_grad():
                model(**inputs)
        return fn

    rows = compare({name: run(m) for name, m in cases.items()}, baseline="base CLIPSeg", repeats=args.repeats)
    print_table("VLSM seg adapters: CLIPSeg forward", rows, "base CLIPSeg")
    total = sum(p.numel() for p in base.parameters())
    print("trainable parameters: " + ", ".join(f"{k} {v} ({100 * v / total:.2f}%)" for k, v in params.items()))
    return {"rows": rows, "trainable_params": params, "base_params": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps medians stable on shared CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"settings": vars(args), "mask_tuning": bench_mask_tuning(args), "seg_adapters": bench_seg_adapters(args)}
    save("bench_mask_seg", results)
    merged_ratio = results["mask_tuning"]["rows"]["mask tuning, merged"]["ratio"]
    print(f"\nmerged mask-tuned / base: {merged_ratio:.3f} (target 1.00)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
