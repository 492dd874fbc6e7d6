"""Generalisation of a resolution policy: the same comparison on SHIFTED held-out GlyphQA sets.

What: for each set (a `GlyphQAConfig` variant and a fine-question share, test split, images from the test stream of
`--seed`, disjoint from the default's train stream and the RL recipe's `rl` stream), `adaptune.rl.inference
.compare_methods` runs the policy's two-turn loop, always-low, always-full and the tool path on every question
(resize_all); the per-question oracle comes from their greedy answers (`oracle_decisions`: the tool path where
the direct half-resolution answer is wrong and the tool path's right, else the direct answer). Reported per set:
accuracy and visual tokens of each method, the policy's resize rate on coarse questions, on small-digit and
large-digit questions (same wording, different image), and on the oracle's "needs full" and "low suffices" groups,
plus per-kind accuracy.

Why: the recipe's own report (`make demo-rl`) scores one mix (30% digit questions, half the digits large). A policy
that learned a rule on the question text, or on one mix, shows it here: fine share 10-70%, all-small or all-large
digits, unseen layouts, 6-7 shapes, other digit sizes, stronger colour jitter, the binding questions.

How (one torch thread; about a minute per set of 300 questions on a lightly loaded 2-core machine, up to 9 under a
load average of 7):

    python benchmarks/generalisation.py                                   # the shipped policy, all sets, seed 0
    python benchmarks/generalisation.py --adapter runs/NAME/adapter --seed 0 1
    python benchmarks/generalisation.py --num 8 --sets reference,all-large --out /tmp/gen   # smoke

Writes benchmarks/results/generalisation.json and .md (`--out STEM` for other paths) and prints the markdown table.
The JSON is rewritten after every set; Ctrl-C tabulates what was measured, and `--render STEM.json` rebuilds the
table from a JSON alone. Table and remarks: docs/visionthink.md#generalisation-shifted-held-out-sets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from adaptune.data.glyphqa import COARSE_QTYPES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

MAX_NEW_TOKENS = 48  # the recipe's `grpo.env.turn_tokens`, which its held-out evaluation uses
METHODS = ("policy", "low", "full", "resize_all", "oracle")
LABELS = {"policy": "policy", "low": "always-low", "full": "always-full", "resize_all": "tool path always",
          "oracle": "oracle"}
RESIZE_GROUPS = (("coarse", "coarse"), ("fine/small digit", "small digit"), ("fine/large digit", "large digit"),
                 ("needs full", "needs full"), ("low suffices", "low suffices"))


@dataclass(frozen=True)
class ShiftedSet:
    """One held-out set: GlyphQAConfig overrides on top of the training mix, and the share of digit questions."""

    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    fine_fraction: float = 0.3


# The training mix (`recipes/qwen3_vl/glyphqa/visionthink_grpo.yaml`): layout free, 2-5 shapes, 7 px digits, half of
# them large, colour jitter 12, background jitter 20, the default coarse question types; held-out at 30% digits.
TRAIN_MIX = {"large_digit_fraction": 0.5}
SETS = (
    ShiftedSet("reference", "the recipe's held-out mix (30% digit questions, half the digits large)"),
    ShiftedSet("fine-10", "10% digit questions", fine_fraction=0.1),
    ShiftedSet("fine-50", "50% digit questions", fine_fraction=0.5),
    ShiftedSet("fine-70", "70% digit questions (the RL training share)", fine_fraction=0.7),
    ShiftedSet("all-small", "every digit small (large_digit_fraction 0)", {"large_digit_fraction": 0.0}),
    ShiftedSet("all-large", "every digit large (large_digit_fraction 1)", {"large_digit_fraction": 1.0}),
    ShiftedSet("quadrants", "unseen layout: one shape per image quadrant (2-4 shapes)",
               {"layout": "quadrants", "max_shapes": 4}),
    ShiftedSet("shapes-6-7", "6-7 shapes per image (trained on 2-5; fewer when they do not fit)",
               {"min_shapes": 6, "max_shapes": 7}),
    ShiftedSet("digit-5px", "5 px digits (large ones 10 px), half large", {"digit_px": 5}),
    ShiftedSet("digit-9px", "9 px digits, all small (a large 18 px digit does not fit every shape)",
               {"digit_px": 9, "large_digit_fraction": 0.0}),
    ShiftedSet("colour-jitter", "colour jitter 30 (max allowed; trained 12), background jitter 60 (trained 20)",
               {"color_jitter": 30, "background_jitter": 60}),
    ShiftedSet("binding", "coarse questions also from the binding types (count_color, color_of_shape, ...)",
               {"coarse_qtypes": COARSE_QTYPES}),
)


def glyphqa_config(spec: ShiftedSet, seed: int, num: int) -> Any:
    """The GlyphQAConfig of a set (validated by GlyphQAConfig itself)."""
    from adaptune.data import GlyphQAConfig

    return GlyphQAConfig(seed=seed, num_images=1, num_validation=0, num_test=num, **{**TRAIN_MIX, **spec.overrides})


def resolved_overrides(spec: ShiftedSet, seed: int, num: int) -> dict[str, Any]:
    """The GlyphQAConfig fields the set sets (the training mix plus its shift), as JSON values."""
    cfg = glyphqa_config(spec, seed, num)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in
            ((k, getattr(cfg, k)) for k in {**TRAIN_MIX, **spec.overrides})}


def heldout_rows(spec: ShiftedSet, seed: int, num: int) -> list[dict[str, Any]]:
    """`num` test-split rows of the set: full-resolution image, question, answer, kind, digit_size."""
    from adaptune.data import build_split

    ds = build_split(glyphqa_config(spec, seed, num), "test", num_images=num, fine_fraction=spec.fine_fraction)
    return [{"image": r["image"].convert("RGB"), **{k: r[k] for k in ("question", "answer", "kind", "digit_size")}}
            for r in ds]


def load_policy(adapter: str | None) -> tuple[Any, dict[str, Any]]:
    """(LoadedModel with the policy adapter, provenance). None: the shipped policy (checksum verified). A folder with
    POLICY.json is verified the same way; a run directory means its adapter/; the base must be the embedded default
    (GlyphQA's 128 px images and the protocol warm start are its own)."""
    from adaptune.adapters import load_adapter
    from adaptune.default import POLICY, load_default_policy
    from adaptune.models import load_model
    from adaptune.utils.io import sha256_file

    path = Path(adapter) if adapter else POLICY
    if not (path / "adapter_config.json").exists() and (path / "adapter" / "adapter_config.json").exists():
        path = path / "adapter"
    if not (path / "adapter_config.json").exists():
        raise SystemExit(f"error: --adapter {path}: no adapter_config.json there (a GRPO run's adapter/ folder or "
                         f"a run directory holding one)")
    record = json.loads((path / "adaptune.json").read_text()) if (path / "adaptune.json").exists() else {}
    if record.get("source", "default") != "default":
        raise SystemExit(f"error: --adapter {path} was trained on {record['source']!r}; this benchmark evaluates "
                         f"policies of the embedded default (`model.source: default`)")
    if (path / "POLICY.json").exists():
        loaded = load_default_policy(path)
    else:
        loaded = load_model("default", tool_calling=True)
        loaded.model = load_adapter(loaded.model, path).eval()
    return loaded, {"adapter": str(path), "adapter_sha256": sha256_file(path / "adapter_model.safetensors")}


def evaluate_set(loaded: Any, spec: ShiftedSet, seed: int, num: int, batch_size: int) -> dict[str, Any]:
    """`compare_methods` on one set, with the settings of the recipe's held-out evaluation (rule judge, half
    resolution first, 48 new tokens per turn); the baselines are the base model (adapter disabled)."""
    from adaptune.rl.inference import compare_methods

    rows = heldout_rows(spec, seed, num)
    t0 = time.perf_counter()
    result = compare_methods(loaded.model, loaded.processor, rows, METHODS, judge="rule", family=loaded.family,
                             downsample_factor=0.5, max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size)
    return {"n": result["n"], "seconds": round(time.perf_counter() - t0, 1), "methods": result["methods"],
            "examples": result.get("examples", {})}


# ------------------------------------------------------------------------------------------------ tables


def _cell(methods: dict[str, Any], method: str, group: str, key: str) -> Any:
    cells = methods.get(method, {}).get(group)
    return None if cells is None else cells[key]


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _seed_results(sets: dict[str, Any], seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(set name, that seed's results) for every set that has the seed."""
    for name, entry in sets.items():
        res = entry["results"].get(str(seed))
        if res is not None:
            yield name, res


def headline_rows(sets: dict[str, Any], seed: int) -> list[dict[str, str]]:
    """One row per set: accuracy (tokens) of each method, the policy's resize rates per group (n)."""
    out = []
    for name, res in _seed_results(sets, seed):
        m = res["methods"]
        row = {"set": name, "n": str(res["n"])}
        for method in ("policy", "oracle"):
            row[f"{LABELS[method]} acc"] = _fmt(_cell(m, method, "all", "accuracy"), 3)
            row[f"{LABELS[method]} tokens"] = _fmt(_cell(m, method, "all", "visual_tokens"), 1)
        for method in ("low", "full", "resize_all"):
            row[f"{LABELS[method]} acc"] = _fmt(_cell(m, method, "all", "accuracy"), 3)
        for group, label in RESIZE_GROUPS:
            rate, n = _cell(m, "policy", group, "resize_rate"), _cell(m, "policy", group, "n")
            row[f"policy resize: {label}"] = "-" if rate is None else f"{rate:.2f} ({n})"
        out.append(row)
    return out


def kind_rows(sets: dict[str, Any], seed: int) -> list[dict[str, str]]:
    """One row per set: accuracy of policy / always-low / always-full / oracle on coarse, small and large digits."""
    out = []
    for name, res in _seed_results(sets, seed):
        row = {"set": name}
        for group, label in RESIZE_GROUPS[:3]:
            values = [_fmt(_cell(res["methods"], method, group, "accuracy")) for method in ("policy", "low", "full",
                                                                                            "oracle")]
            row[f"{label}: policy / low / full / oracle"] = " / ".join(values)
        out.append(row)
    return out


def spread_rows(sets: dict[str, Any], seeds: list[int]) -> list[dict[str, str]]:
    """Across seeds, per set: mean and [min, max] of the headline figures."""
    out = []
    figures = (("policy", "all", "accuracy"), ("full", "all", "accuracy"), ("oracle", "all", "accuracy"),
               ("policy", "all", "visual_tokens"), ("policy", "fine/large digit", "resize_rate"),
               ("policy", "low suffices", "resize_rate"))
    for name, entry in sets.items():
        results = [entry["results"][str(s)] for s in seeds if str(s) in entry["results"]]
        if len(results) < 2:
            continue
        row = {"set": name}
        for method, group, key in figures:
            values = [v for v in (_cell(r["methods"], method, group, key) for r in results) if v is not None]
            label = f"{LABELS[method]} {key.replace('_', ' ')}" + ("" if group == "all" else f" ({group})")
            row[label] = "-" if not values else \
                f"{statistics.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
        out.append(row)
    return out


def constant_tokens(sets: dict[str, Any]) -> str:
    """The always-low / always-full token counts when they are the same on every set (else: see the JSON)."""
    seen = {method: {round(r["methods"][method]["all"]["visual_tokens"], 3) for e in sets.values()
                     for r in e["results"].values()} for method in ("low", "full", "resize_all")}
    if all(len(v) == 1 for v in seen.values()):
        return (f"always-low spends {next(iter(seen['low']))} visual tokens per question, always-full "
                f"{next(iter(seen['full']))} and the tool path {next(iter(seen['resize_all']))} on every set.")
    return "Visual tokens of always-low / always-full / tool path differ between sets: see the JSON."


def markdown(payload: dict[str, Any]) -> str:
    from adaptune.utils.markdown import markdown_table

    sets = payload["sets"]
    seeds = [s for s in payload["seeds"] if any(str(s) in e["results"] for e in sets.values())]
    parts = ["# Generalisation: shifted held-out GlyphQA sets\n",
             f"Adapter `{payload['adapter']}` (sha256 {payload['adapter_sha256'][:12]}...), {payload['num']} "
             f"questions per set (test split), seeds {', '.join(map(str, seeds))}, rule judge, greedy, "
             f"{payload['max_new_tokens']} new tokens per turn, {payload['time']}"
             + (f"; INTERRUPTED {payload['interrupted']}" if "interrupted" in payload else "") + ".\n",
             "acc = accuracy; tokens = visual tokens per question; policy resize = share of questions it resized on, "
             "(n) = questions in the group. small / large digit: the same digit question, digit drawn small (full "
             "resolution needed) or large (readable at half). needs full / low suffices: the per-question oracle's "
             f"groups (the base model's direct half-resolution answer wrong and the tool path right, or not). "
             f"{constant_tokens(sets)}\n"]
    for seed in seeds:
        parts.append(f"## Seed {seed}\n")
        parts.append(markdown_table(headline_rows(sets, seed)))
        parts.append("\nAccuracy per kind (coarse, small-digit, large-digit questions):\n")
        parts.append(markdown_table(kind_rows(sets, seed)))
    if len(seeds) > 1:
        parts.append(f"\n## Across seeds {', '.join(map(str, seeds))}: mean [min, max]\n")
        parts.append(markdown_table(spread_rows(sets, seeds)))
    parts.append("\nSets:\n")
    parts += [f"- `{name}`: {entry['description']}; digit questions {entry['fine_fraction']:.0%}; GlyphQAConfig "
              f"`{json.dumps(entry['config'])}`" for name, entry in sets.items()]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", default=None, help="a policy adapter folder or GRPO run directory (default: the "
                   "shipped policy, adaptune/default/assets/policy)")
    p.add_argument("--num", type=int, default=300, help="questions (images) per set")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="GlyphQA seed(s) of the test images; several: "
                   "every set per seed, plus mean and spread")
    p.add_argument("--sets", default=None, help=f"comma-separated subset of: {', '.join(s.name for s in SETS)}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=str(RESULTS / "generalisation"), help="output stem: STEM.json and STEM.md")
    p.add_argument("--render", default=None, metavar="JSON", help="only rewrite (and print) the markdown table of an "
                   "earlier run's JSON, e.g. an interrupted one, next to it; nothing is evaluated")
    args = p.parse_args(argv)
    if args.num < 1:
        p.error(f"--num must be >= 1, got {args.num}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    known = {s.name for s in SETS}
    if args.sets is not None:
        names = [n.strip() for n in args.sets.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            p.error(f"--sets: unknown {unknown or 'empty list'}; choose from {', '.join(s.name for s in SETS)}")
        args.sets = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        source = Path(args.render)
        write_markdown(json.loads(source.read_text()), source.with_suffix(".md"))
        return 0
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    chosen = [s for s in SETS if args.sets is None or s.name in args.sets]
    for spec in chosen:  # a bad set configuration fails before any model work
        glyphqa_config(spec, args.seed[0], args.num)
    loaded, provenance = load_policy(args.adapter)
    json_path, md_path = Path(f"{args.out}.json"), Path(f"{args.out}.md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "benchmark": "generalisation", "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        **provenance, "num": args.num, "seeds": args.seed, "split": "test", "judge": "rule",
        "max_new_tokens": MAX_NEW_TOKENS, "downsample": 0.5, "methods": list(METHODS),
        "sets": {s.name: {"description": s.description, "fine_fraction": s.fine_fraction,
                          "config": resolved_overrides(s, args.seed[0], args.num), "results": {}} for s in chosen},
    }
    jobs = [(seed, spec) for seed in args.seed for spec in chosen]
    done = 0
    try:
        for seed, spec in (bar := tqdm(jobs, desc="shifted sets", unit="set")):
            bar.set_postfix_str(f"seed {seed} {spec.name}")
            payload["sets"][spec.name]["results"][str(seed)] = evaluate_set(loaded, spec, seed, args.num,
                                                                            args.batch_size)
            done += 1
            json_path.write_text(json.dumps(payload, indent=2) + "\n")
    except KeyboardInterrupt:  # Ctrl-C: keep and tabulate what was measured
        payload["interrupted"] = f"after {done} of {len(jobs)} sets"
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(payload, md_path)
    print(f"wrote {json_path} and {md_path}")
    return 130 if "interrupted" in payload else 0


def write_markdown(payload: dict[str, Any], md_path: Path) -> None:
    table = markdown(payload)
    md_path.write_text(table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
