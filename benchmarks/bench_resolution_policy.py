"""Resolution policy: visual tokens and wall time per answered question / always-full, on held-out GlyphQA.

The policy is the VisionThink adapter of a GRPO run (`--adapter`, default: the demo run's `runs/<name>/adapter` when
it exists) on the embedded default, or, without an adapter, the warm-started default choosing for itself. Both the
policy (half-resolution first turn, a second turn with the full image when it calls `resize_image`) and always-full
(the full image in the first turn, direct answer) answer the same held-out questions (30% fine, the RL eval mix);
each repeat times both, alternating which goes first. "Answered" means the final turn holds an `<answer>`.

    python benchmarks/bench_resolution_policy.py [--adapter runs/qwen3_vl-glyphqa-visionthink/adapter]
                                                 [--questions 64 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_ADAPTER = ROOT / "runs" / "qwen3_vl-glyphqa-visionthink" / "adapter"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", default=None, help="a VisionThink adapter folder (default: the demo run's)")
    parser.add_argument("--no-adapter", action="store_true", help="the warm-started default itself, even if a demo "
                        "adapter exists")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-save", action="store_true", help="print only (smoke tests)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from adaptune.adapters import load_adapter
    from adaptune.data import GlyphQAConfig, heldout_mix
    from adaptune.models import load_model
    from adaptune.budget.two_turn import answer_with_resolution_policy, summarize
    from adaptune.rl.inference import score_results

    loaded = load_model("default")
    model, processor = loaded.model, loaded.processor
    if args.no_adapter:
        adapter = None
    else:
        adapter = Path(args.adapter) if args.adapter else (DEMO_ADAPTER if DEMO_ADAPTER.exists() else None)
    if adapter is not None:
        model = load_adapter(model, adapter)
    policy_name = f"policy ({adapter})" if adapter else "policy (warm-started default, no RL adapter)"
    rows = heldout_mix(GlyphQAConfig(seed=0), fine_fraction=0.3, num_images=args.questions)
    images, questions, answers = list(rows["image"]), list(rows["question"]), list(rows["answer"])

    def run(always):
        t0 = time.perf_counter()
        results = answer_with_resolution_policy(model, processor, images, questions, always=always, batch_size=32)
        seconds = time.perf_counter() - t0
        answered = [r for r in results if r.answer]
        cells = summarize(results, score_results(results, questions, answers))["all"]  # the rule judge, as eval
        return {"seconds": seconds, "answered": len(answered), "accuracy": cells["accuracy"],
                "visual_tokens": cells["visual_tokens"], "resize_rate": cells["resize_rate"],
                "s_per_answered": seconds / max(1, len(answered)),
                "tokens_per_answered": sum(r.visual_tokens for r in answered) / max(1, len(answered))}

    run("full")  # warm-up
    per: dict[str, list[dict]] = {"policy": [], "full": []}
    for rep in range(args.repeats):
        order = [("policy", None), ("full", "full")]
        for name, always in order if rep % 2 == 0 else order[::-1]:
            per[name].append(run(always))
    time_ratios = [p["s_per_answered"] / f["s_per_answered"] for p, f in zip(per["policy"], per["full"])]
    token_ratio = per["policy"][0]["tokens_per_answered"] / per["full"][0]["tokens_per_answered"]
    summary = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in per.items()}
    print(f"\n## Resolution policy vs always-full on {len(rows)} held-out questions (30% fine), "
          f"{args.repeats} repeats\npolicy: {policy_name}")
    print(f"{'method':<10} {'accuracy':>8} {'answered':>8} {'resize':>7} {'tokens/ans':>10} {'s/ans':>8}")
    for name, s in summary.items():
        print(f"{name:<10} {s['accuracy']:>8.3f} {s['answered']:>8.0f} {s['resize_rate']:>7.2f} "
              f"{s['tokens_per_answered']:>10.2f} {s['s_per_answered']:>8.4f}")
    print(f"visual tokens per answered question, policy / always-full: {token_ratio:.3f}")
    print(f"wall time per answered question, policy / always-full: {statistics.median(time_ratios):.3f} "
          f"[{min(time_ratios):.3f}, {max(time_ratios):.3f}]")
    print("(the policy's extra cost is the second generate call on resized rows; the first turn is cheaper: "
          "4 visual tokens instead of 16)")
    if not args.no_save:
        save("resolution_policy", {"policy": policy_name, "questions": len(rows), "repeats": args.repeats,
                                   "summary": summary, "token_ratio": token_ratio,
                                   "time_ratio": statistics.median(time_ratios),
                                   "time_ratio_min": min(time_ratios), "time_ratio_max": max(time_ratios)})
    print(machine())


if __name__ == "__main__":
    main()
