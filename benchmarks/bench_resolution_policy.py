"""Resolution policy: visual tokens and wall time per answered question / always-full, with and without KV reuse.

Two configurations, each measured side by side in one run:
- the embedded default with the VisionThink adapter of a GRPO run (`--adapter`, default: the demo run's
  `runs/<name>/adapter` when it exists; `--no-adapter`: the warm-started default choosing for itself), on held-out
  GlyphQA (30% fine, the RL eval mix);
- a larger random-weight Qwen3-VL (`--skip-large` to leave it out) where prefill dominates: a 4-layer, 512-wide
  language model and a 4-layer, 256-wide vision tower (18.8M parameters, 4x the default's), `--large-size` px
  images (768: 576 visual tokens full, 144 at half resolution). Random weights cannot choose, so generation is
  scripted onto the protocol's turns, and the choice is made by rule: resize on the fine ("What digit ...")
  questions, answer directly on the others, as the trained policy does on GlyphQA; always-full answers after the
  same direct prefix.

Each repeat times the policy with KV reuse (the second turn continues from the first turn's cache), the policy
re-encoding the whole conversation in the second turn (as before KV reuse) and always-full (full image in the first
turn, direct answer), rotating the order. "Answered" means the final turn holds an `<answer>`.

    python benchmarks/bench_resolution_policy.py [--adapter runs/qwen3_vl-glyphqa-visionthink/adapter]
                                                 [--questions 64 --repeats 3 --large-questions 8]

The defaults (32 and 4 questions) fit `make bench`'s per-benchmark budget; docs/visionthink.md has the larger run:
with KV reuse the policy / always-full wall time went from 1.51 to 1.21 on the default and from 0.62 to 0.555 on
the larger configuration.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_ADAPTER = ROOT / "runs" / "qwen3_vl-glyphqa-visionthink" / "adapter"
METHODS = {"policy, KV reuse": {"kv_reuse": True}, "policy, re-encode": {"kv_reuse": False},
           "always-full": {"always": "full"}}


def measure(model: Any, processor: Any, images: list, questions: list[str], answers: list[str], repeats: int,
            batch_size: int = 32) -> dict[str, Any]:
    """Per method: medians over repeats; per repeat: wall-time ratios measured in the same repeat."""
    from adaptune.budget.two_turn import answer_with_resolution_policy, summarize
    from adaptune.rl.inference import score_results

    def run(kwargs: dict[str, Any]) -> dict[str, float]:
        t0 = time.perf_counter()
        results = answer_with_resolution_policy(model, processor, images, questions, batch_size=batch_size, **kwargs)
        seconds = time.perf_counter() - t0
        answered = [r for r in results if r.answer]
        cells = summarize(results, score_results(results, questions, answers))["all"]  # the rule judge, as eval
        return {"seconds": seconds, "answered": len(answered), "accuracy": cells["accuracy"],
                "resize_rate": cells["resize_rate"], "s_per_answered": seconds / max(1, len(answered)),
                "tokens_per_answered": sum(r.visual_tokens for r in answered) / max(1, len(answered)),
                "raw": [r.raw for r in results]}

    run(METHODS["policy, KV reuse"])  # warm-up
    run(METHODS["always-full"])
    names = list(METHODS)
    per: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names[rep % 3:] + names[:rep % 3]:
            per[name].append(run(METHODS[name]))
    same = all(a["raw"] == b["raw"] for a, b in zip(per["policy, KV reuse"], per["policy, re-encode"]))

    def ratios(a: str, b: str) -> list[float]:
        return [x["s_per_answered"] / y["s_per_answered"] for x, y in zip(per[a], per[b])]

    summary = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "raw"} for name, rs in per.items()}
    full_tokens = summary["always-full"]["tokens_per_answered"]
    return {"summary": summary, "same_answers": same,
            "token_ratio": summary["policy, KV reuse"]["tokens_per_answered"] / max(1e-9, full_tokens),
            "time_ratio_kv": ratios("policy, KV reuse", "always-full"),
            "time_ratio_reencode": ratios("policy, re-encode", "always-full"),
            "kv_over_reencode": ratios("policy, KV reuse", "policy, re-encode")}


def report(title: str, result: dict[str, Any]) -> None:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"

    print(f"\n## {title}")
    print(f"{'method':<18} {'accuracy':>8} {'answered':>8} {'resize':>7} {'tokens/ans':>10} {'s/ans':>8}")
    for name, s in result["summary"].items():
        print(f"{name:<18} {s['accuracy']:>8.3f} {s['answered']:>8.0f} {s['resize_rate']:>7.2f} "
              f"{s['tokens_per_answered']:>10.2f} {s['s_per_answered']:>8.4f}")
    print(f"visual tokens per answered question, policy / always-full: {result['token_ratio']:.3f}")
    print(f"wall time per answered question, policy / always-full, with KV reuse: {spread(result['time_ratio_kv'])}")
    print(f"wall time per answered question, policy / always-full, re-encoding:   "
          f"{spread(result['time_ratio_reencode'])}")
    print(f"policy with KV reuse / policy re-encoding: {spread(result['kv_over_reencode'])}; "
          f"same answers both ways: {result['same_answers']}")


class ChooseByKeyword:
    """At the first turn's choice point (right after `<|im_start|>assistant\n<think>`, no tool response before it),
    push the tool call on rows whose prompt holds `keyword` (GlyphQA's fine questions: "What digit ...") and the
    direct answer on the others."""

    def __init__(self, processor: Any, keyword: str, choice_point: list[int], tool_token: int, direct_token: int,
                 push: float = 100.0) -> None:
        tok = processor.tokenizer
        self.keyword = tok(keyword, add_special_tokens=False)["input_ids"]
        self.tool_response = tok("</tool_response>", add_special_tokens=False)["input_ids"]
        self.choice_point, self.tool, self.direct, self.push = choice_point, tool_token, direct_token, push

    @staticmethod
    def _holds(row: list[int], part: list[int]) -> bool:
        return any(row[i:i + len(part)] == part for i in range(len(row) - len(part) + 1))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n = len(self.choice_point)
        for b, row in enumerate(input_ids.tolist()):
            if row[-n:] != self.choice_point or self._holds(row, self.tool_response):
                continue
            scores[b, self.tool if self._holds(row, self.keyword) else self.direct] += self.push
        return scores


def script_protocol(model: Any, processor: Any, answer: str = "3", big: float = 40.0) -> None:
    """Put a RANDOM-weight model's greedy turns on the protocol: `generation_config.sequence_bias` writes the turns (a
    tool call, a direct answer in tags, the answer after the tool turn, the answer after always-full's direct prefix);
    `ChooseByKeyword` makes the choice (resize on the fine questions, as the trained policy does on GlyphQA)."""
    import functools

    from transformers import LogitsProcessorList

    from adaptune.budget.protocol import direct_prefix, tool_call_text

    tok = processor.tokenizer

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    header = enc("<|im_start|>assistant\n") + enc("<think>")
    after_tool = enc("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    tool = enc("x</think>\n" + tool_call_text()) + [im_end]
    direct = enc(f"y</think><answer>{answer}</answer>") + [im_end]
    final = enc(f"<think>z</think><answer>{answer}</answer>") + [im_end]
    prefilled = enc(direct_prefix()) + enc(f"{answer}</answer>") + [im_end]
    bias = {tuple(enc("<|im_start|>assistant\n") + enc("<think>")): big}
    for before, seq, first in ((header, tool, 1), (header, direct, 1), (after_tool, final, 0)):  # 1: the choice
        bias.update({tuple(before + seq[: k + 1]): big for k in range(first, len(seq))})          # is not biased
    start = len(enc(direct_prefix()))
    bias.update({tuple(prefilled[: k + 1]): 3 * big for k in range(start, len(prefilled))})
    model.generation_config.sequence_bias = bias
    chooser = ChooseByKeyword(processor, " digit", header, tool[0], direct[0])
    model.generate = functools.partial(model.generate, logits_processor=LogitsProcessorList([chooser]))


def large_config(questions: int, size: int = 768, seed: int = 0) -> tuple[Any, Any, list, list[str], list[str]]:
    """A random-weight Qwen3-VL with 4x the default's parameters, on `size` px GlyphQA images (upscaled)."""
    from adaptune.data import GlyphQAConfig, heldout_mix
    from adaptune.models.tiny import tiny_qwen3_vl

    model, processor = tiny_qwen3_vl(
        seed=seed, max_pixels=size * size,
        text=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                        "mrope_section": [16, 8, 8]}),
        vision=dict(hidden_size=256, intermediate_size=512, depth=4, num_heads=4))
    script_protocol(model, processor)
    rows = heldout_mix(GlyphQAConfig(seed=0), fine_fraction=0.3, num_images=questions)
    images = [im.resize((size, size), Image.NEAREST) for im in rows["image"]]
    return model, processor, images, list(rows["question"]), list(rows["answer"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", default=None, help="a VisionThink adapter folder (default: the demo run's)")
    parser.add_argument("--no-adapter", action="store_true", help="the warm-started default itself, even if a demo "
                        "adapter exists")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--large-questions", type=int, default=4, help="questions for the large random config")
    parser.add_argument("--skip-default", action="store_true", help="only the large random config")
    parser.add_argument("--large-size", type=int, default=768, help="image side of the large config (multiple of 32)")
    parser.add_argument("--skip-large", action="store_true", help="only the embedded default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-save", action="store_true", help="print only (smoke tests)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from adaptune.adapters import load_adapter
    from adaptune.data import GlyphQAConfig, heldout_mix
    from adaptune.models import load_model

    loaded = load_model("default")
    model, processor = loaded.model, loaded.processor
    if args.no_adapter:
        adapter = None
    else:
        adapter = Path(args.adapter) if args.adapter else (DEMO_ADAPTER if DEMO_ADAPTER.exists() else None)
    if adapter is not None:
        model = load_adapter(model, adapter)
    policy_name = f"policy ({adapter})" if adapter else "policy (warm-started default, no RL adapter)"
    results: dict[str, Any] = {}
    if not args.skip_default:
        rows = heldout_mix(GlyphQAConfig(seed=0), fine_fraction=0.3, num_images=args.questions)
        default = measure(model, processor, list(rows["image"]), list(rows["question"]), list(rows["answer"]),
                          args.repeats)
        report(f"Embedded default: {policy_name}, {len(rows)} held-out questions (30% fine), {args.repeats} repeats",
               default)
        results["default"] = {"policy": policy_name, "questions": len(rows), **default}
    if not args.skip_large:
        big, big_processor, images, questions, answers = large_config(args.large_questions, args.large_size)
        n_params = sum(p.numel() for p in big.parameters())
        large = measure(big, big_processor, images, questions, answers, args.repeats, batch_size=16)
        full_tokens = (args.large_size // 32) ** 2
        report(f"Larger random-weight Qwen3-VL ({n_params / 1e6:.1f}M parameters, {args.large_size} px: {full_tokens} "
               f"visual tokens full, {full_tokens // 4} half), scripted turns, {len(questions)} questions, "
               f"{args.repeats} repeats", large)
        results["large"] = {"parameters": n_params, "image_size": args.large_size, "questions": len(questions),
                            **large}
    print("\n(the policy's first turn is cheaper: a quarter of the visual tokens; its extra cost is the second turn "
          "and its longer turns: think + tool call instead of a prefilled direct answer)")
    if not args.no_save:
        save("resolution_policy", {"repeats": args.repeats, **results})
    print(machine())


if __name__ == "__main__":
    main()
