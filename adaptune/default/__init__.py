"""The embedded default VLM: a tiny real Qwen3-VL trained from scratch on GlyphQA, shipped inside the package.

`load_model("default")` resolves to `default_model_path()` (`shipped.py` registers the model source "default"),
which checks the weights against the sha256 recorded in `assets/BUILD.json` and refuses a mismatch. The model
answers coarse GlyphQA questions at half and full resolution, reads the small digit only at full resolution, and is
warm-started on the `resize_image` tool protocol (about half of its first turns call the tool, whatever the
question) so a GRPO run can teach it WHEN to resize.

    adaptune default verify                      # checksum + a quick accuracy check
    adaptune default build                       # rebuild assets/ from scratch (~45 min on 2 CPU cores)
    adaptune default build --quick --out DIR     # ~2 minute smoke build into DIR
    adaptune default ship-policy runs/qwen3_vl-glyphqa-visionthink   # a GRPO run's adapter -> assets/policy

Next to the weights ships the trained resolution policy (assets/policy: the LoRA adapter of the VisionThink GRPO
recipe, checksum in POLICY.json; `load_default_policy()`), which `adaptune demo` compares with always-low, always-full
and the per-question oracle.
"""

from __future__ import annotations

import argparse

from adaptune.default.shipped import (
    ASSETS,
    POLICY,
    REBUILD,
    DefaultModelError,
    default_model_path,
    load_default_policy,
    ship_policy,
    verify_assets,
    verify_policy,
)


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


def _cmd_ship_policy(args: argparse.Namespace) -> int:
    record = ship_policy(args.run_dir, args.dest)
    verify_policy(args.dest)
    print(f"shipped the policy of {args.run_dir} to {args.dest} (seed {record['seed']}, {record.get('steps')} steps)")
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
    p = sub.add_parser("ship-policy", help="copy a GRPO run's adapter into the package as the shipped policy")
    p.add_argument("run_dir", help="a finished `kind: grpo` run on the default (its adapter/ and eval.json)")
    p.add_argument("--dest", default=str(POLICY))
    p.set_defaults(func=_cmd_ship_policy)


__all__ = ["ASSETS", "POLICY", "REBUILD", "DefaultModelError", "add_cli", "default_model_path", "load_default_policy",
           "ship_policy", "verify_assets", "verify_policy"]
