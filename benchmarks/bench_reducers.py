"""Training-free token reducers: prefill time at budgets 1/4/9 vs full visual tokens, and each reducer's own overhead.

    python benchmarks/bench_reducers.py [--model default | --family qwen3_vl|qwen2_5_vl|llava]
                                        [--budgets 1 4 9] [--batch 4] [--repeats 7] [--threads 1] [--quick]

One process, one model (default: the embedded default, a tiny Qwen3-VL; 128 px images = 16 visual tokens). The
baseline is the model without a reducer on the stock processor's batch (full tokens); each case is one reducer
attached (`reduce_tokens`) on a `BudgetProcessor` batch with K placeholders per image. Two timings, each interleaved
across cases repeat by repeat, ratios = median of per-repeat ratios to the baseline, with their spread:
- LLM prefill: the language model alone on the exact inputs it receives in that case (captured once by a pre-hook),
  as in bench_flex_prefill.py; this is where fewer visual tokens save time;
- full forward: vision tower + reduction + language model, no cache (what a caller pays per batch).
The reducer's own overhead is `ReducerHandle.last_selection_s` of the full forwards: the time spent computing scores
(FasterVLM's attention), choosing the kept tokens or merge groups, and gathering them; printed as the median and as a
share of the case's full forward. The models are tiny: this measures cost, not accuracy.
Writes benchmarks/results/bench_reducers.json (not with --quick).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import capture_lm_inputs, compare, print_table, save, timed  # noqa: E402

from adaptune.budget import BudgetProcessor, reduce_tokens  # noqa: E402
from adaptune.models import build_tiny, get_family, load_model  # noqa: E402
from adaptune.models.inputs import example_images  # noqa: E402
from adaptune.registry import REDUCERS  # noqa: E402


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, str, int]:
    if args.family:
        model, processor = build_tiny(args.family, seed=0)
        return model.eval(), processor, args.family, 32 if args.family == "llava" else 128
    loaded = load_model(args.model)
    return loaded.model.eval(), loaded.processor, loaded.family.name, args.image_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="a model source for load_model (default: 'default')")
    parser.add_argument("--family", default=None, choices=["qwen3_vl", "qwen2_5_vl", "llava"],
                        help="a seeded tiny model of this family instead of --model")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 4, 9])
    parser.add_argument("--reducers", nargs="+", default=None, help="default: every registered reducer")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps medians stable on shared CPUs)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 repeats, no results file (smoke runs)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 2, 2
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, processor, family, size = _model(args)
    processor.tokenizer.padding_side = "left"
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit is shown?"}]}]
    text = [processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)] * args.batch
    images = example_images(args.batch, size)
    budget_processor = BudgetProcessor(processor)
    token_id = budget_processor.image_token_id
    stock = dict(processor(images=images, text=text, return_tensors="pt", padding=True))
    full_tokens = int((stock["input_ids"][0] == token_id).sum())
    names = args.reducers or REDUCERS.names()

    baseline = f"full ({full_tokens} tokens)"
    cases: dict[str, dict[str, Any]] = {baseline: {"reducer": None, "budget": full_tokens, "batch": stock}}
    for name in names:
        for budget in args.budgets:
            batch = dict(budget_processor(images=images, text=text, budget=budget, return_tensors="pt", padding=True))
            cases[f"{name} K={budget}"] = {"reducer": name, "budget": budget, "batch": batch}

    spec = get_family(family)
    lm = spec.get_module(model, "language_model")

    def forward(case: dict[str, Any]) -> tuple[float, float]:
        """One timed full forward with the case's reducer attached; (seconds, the reducer's own seconds)."""
        handle = reduce_tokens(model, case["reducer"]) if case["reducer"] else None
        try:
            seconds = timed(lambda: model(**case["batch"], use_cache=False))
            return seconds, handle.last_selection_s if handle else 0.0
        finally:
            if handle:
                handle.remove()

    with torch.no_grad():
        for case in cases.values():  # what the language model receives in each case (its prefill inputs)
            case["lm"] = capture_lm_inputs(
                model, lm, case["batch"],
                (lambda r=case["reducer"]: reduce_tokens(model, r)) if case["reducer"] else None)
        prefill = compare({n: (lambda kw=c["lm"]: lm(**kw)) for n, c in cases.items()}, baseline,
                          repeats=args.repeats)
        for case in cases.values():  # warm-up
            forward(case)
        times: dict[str, list[float]] = {n: [] for n in cases}
        selection: dict[str, list[float]] = {n: [] for n in cases}
        for _ in range(args.repeats):
            for name, case in cases.items():
                seconds, chosen = forward(case)
                times[name].append(seconds)
                selection[name].append(chosen)

    full: dict[str, dict[str, float]] = {}
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, times[baseline])]
        shares = [s / v for s, v in zip(selection[name], values)]
        full[name] = {"median_s": statistics.median(values), "ratio": statistics.median(ratios),
                      "ratio_min": min(ratios), "ratio_max": max(ratios), "repeats": args.repeats,
                      "selection_s": statistics.median(selection[name]), "selection_share": statistics.median(shares)}
    for name, case in cases.items():
        for rows in (prefill, full):
            rows[name].update(visual_tokens=case["budget"], seq_len=int(case["batch"]["input_ids"].shape[1]))
    print(f"\n{family} ({'tiny' if args.family else args.model}), {args.batch} images of {size} px, "
          f"{full_tokens} visual tokens each, {args.repeats} repeats, {torch.get_num_threads()} thread(s)")
    print_table("LLM prefill (language model only, on the inputs each case gives it)", prefill, baseline)
    print_table("full forward (vision + reduction + LLM)", full, baseline)
    print(f"\n{'case':<22} {'tokens':>6} {'seq':>4} {'LLM prefill':>12} {'full fwd':>9} {'selection ms':>13} "
          f"{'of full fwd':>12}")
    for name in cases:
        r = full[name]
        print(f"{name:<22} {r['visual_tokens']:>6} {r['seq_len']:>4} {prefill[name]['ratio']:>12.3f} "
              f"{r['ratio']:>9.3f} {1000 * r['selection_s']:>13.3f} {100 * r['selection_share']:>11.1f}%")
    if not args.quick:
        save("bench_reducers", {"family": family, "model": "tiny" if args.family else args.model, "image_size": size,
                                "batch": args.batch, "budgets": args.budgets, "prefill": prefill,
                                "full_forward": full})
    return 0


if __name__ == "__main__":
    sys.exit(main())
