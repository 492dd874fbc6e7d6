"""PH-Reg: ViT encoder forward time with R register tokens vs without (expect about 1 + R / N for N patch tokens).

    python benchmarks/bench_registers.py [--family clip] [--image-size 224] [--patch 16] [--hidden 192]
                                         [--layers 6] [--registers 4 16] [--batch 8] [--repeats 7] [--threads 1]

One process: the baseline is the same model with the adapter disabled (the original ViT); each case adds R registers.
The vision tower's forward is timed interleaved across cases, median of per-repeat ratios, next to the token-count
ratio (N + prefix + R) / (N + prefix). Attention grows quadratically with the sequence, so the measured ratio sits
slightly above the token ratio. Writes benchmarks/results/bench_registers.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import compare, print_table, save  # noqa: E402
from peft import get_peft_model  # noqa: E402

from adaptune.methods.registers import RegistersConfig, find_vit  # noqa: E402
from adaptune.models import build_tiny, get_family  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="clip", choices=["clip", "siglip", "dinov2"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--registers", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps medians stable on shared CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spec = get_family(args.family)
    vision_cfg = {"image_size": args.image_size, "patch_size": args.patch, "hidden_size": args.hidden,
                  "intermediate_size": 4 * args.hidden, "num_hidden_layers": args.layers,
                  "num_attention_heads": max(1, args.hidden // 64)}
    if args.family == "clip":
        vision_cfg["projection_dim"] = 32

    def build():
        model, _ = build_tiny(args.family, vision=vision_cfg)
        return model.eval()

    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size)
    base_model = build()
    vit = find_vit(base_model, args.family)
    patches = (args.image_size // args.patch) ** 2
    tokens = patches + vit["num_prefix"]

    def vision_of(model):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        return inner.get_submodule(spec.vision_path) if spec.vision_path else inner

    cases = {"no registers": lambda: vision_of(base_model)(pixel_values=pixels)}
    expected = {"no registers": 1.0}
    for count in args.registers:
        peft_model = get_peft_model(build(), RegistersConfig(num_registers=count)).eval()
        vision = vision_of(peft_model)
        cases[f"R={count}"] = (lambda v: lambda: v(pixel_values=pixels))(vision)
        expected[f"R={count}"] = (tokens + count) / tokens
    with torch.no_grad():
        rows = compare(cases, "no registers", repeats=args.repeats)
    print_table(f"{args.family} encoder forward, {patches} patch tokens, batch {args.batch}", rows, "no registers")
    print(f"{'case':<34} {'token ratio (1 + R/N)':>22}")
    for name in rows:
        rows[name]["token_ratio"] = expected[name]
        print(f"{name:<34} {expected[name]:>22.3f}")
    save("bench_registers", {"family": args.family, "image_size": args.image_size, "patch": args.patch,
                             "hidden": args.hidden, "layers": args.layers, "patch_tokens": patches,
                             "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
