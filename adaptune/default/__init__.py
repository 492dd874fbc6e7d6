"""The embedded default VLM: a tiny real Qwen3-VL trained from scratch on GlyphQA, shipped inside the package.

`load_model("default")` resolves to `default_model_path()` (`shipped.py` registers the model source "default"),
which checks the weights against the sha256 recorded in `assets/BUILD.json` and refuses a mismatch. The model
answers coarse GlyphQA questions at half and full resolution, reads the small digit only at full resolution, and is
warm-started on the `resize_image` tool protocol (about half of its first turns call the tool, whatever the
question) so a GRPO run can teach it WHEN to resize.

    adaptune default verify                      # checksum + a quick accuracy check
    adaptune default build                       # rebuild assets/ from scratch (~45 min on 2 CPU cores)
    adaptune default build --quick --out DIR     # ~2 minute smoke build into DIR
"""

from __future__ import annotations

import argparse

from adaptune.default.shipped import ASSETS, REBUILD, DefaultModelError, default_model_path, verify_assets


def _cmd_build(args: argparse.Namespace) -> int:
    from adaptune.default.build import run

    return run(args)


def _cmd_verify(args: argparse.Namespace) -> int:
    info = verify_assets(args.path)
    print(f"checksum ok: {args.path} ({info['parameters'] / 1e6:.2f}M parameters, built by `{info['command']}`)")
    if args.questions:
        from adaptune.default.evaluate import answer_fixed, cell_summary, heldout_items
        from adaptune.models import load_model

        loaded = load_model(str(args.path))
        items = heldout_items(per_kind=args.questions // 2)
        for res in ("full", "half"):
            summary = cell_summary(answer_fixed(loaded.model, loaded.processor, items, res))
            print(res, {k: round(v["accuracy"], 3) for k, v in summary.items()})
    return 0


def add_cli(subparsers) -> None:
    """`adaptune default build [--out DIR] [--quick]` and `adaptune default verify`."""
    from adaptune.default.build import add_arguments

    parser = subparsers.add_parser("default", help="build or verify the embedded default VLM")
    sub = parser.add_subparsers(dest="default_command", required=True)
    p = sub.add_parser("build", help="train the default from scratch (staged curriculum)")
    add_arguments(p)
    p.set_defaults(func=_cmd_build)
    p = sub.add_parser("verify", help="check the shipped checksum (and, with --questions N, accuracy)")
    p.add_argument("--path", default=str(ASSETS))
    p.add_argument("--questions", type=int, default=0, help="held-out questions to evaluate (0 = checksum only)")
    p.set_defaults(func=_cmd_verify)


__all__ = ["ASSETS", "REBUILD", "DefaultModelError", "add_cli", "default_model_path", "verify_assets"]
