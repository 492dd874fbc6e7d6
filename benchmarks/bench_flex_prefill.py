"""TokenFLEX: language-model prefill time at each visual-token budget vs the family's default token count.

    python benchmarks/bench_flex_prefill.py [--family qwen3_vl] [--image-size 448] [--budgets 16 64 144]
                                            [--text-hidden 256] [--text-layers 4] [--repeats 7] [--threads 1]
                                            [--model PATH]

One process, one model: the default case is the base model (adapter disabled) on the stock processor's output; each
flex case is the TokenFLEX adapter on a `FlexProcessor` batch with that budget. For every case one full forward
records the exact inputs the language model receives (a pre-hook on the family's `language_model`), then the language
model alone is timed on them (the prefill), interleaved across cases, median of repeats; the full forward (vision +
projector + LLM) is timed the same way. Prints two tables and writes benchmarks/results/bench_flex_prefill.json.
Prefill cost grows with the sequence length, so the ratio tracks (text + budget) / (text + default tokens).
The tiny model is random: this measures cost, not accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import capture_lm_inputs, compare, print_table, save  # noqa: E402
from peft import get_peft_model  # noqa: E402

from adaptune.methods.flex_projector import FlexProcessor, FlexProjectorConfig  # noqa: E402
from adaptune.models import build_tiny, get_family, load_model  # noqa: E402
from adaptune.models.inputs import example_images  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen3_vl", choices=["qwen3_vl", "qwen2_5_vl", "llava", "smolvlm"])
    parser.add_argument("--model", default=None, help="a local model folder instead of the tiny model")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 64, 144])
    parser.add_argument("--text-hidden", type=int, default=256)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps medians stable on shared CPUs)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    if args.model:
        loaded = load_model(args.model)
        model, processor, spec = loaded.model, loaded.processor, loaded.family
    else:
        spec = get_family(args.family)
        heads = max(1, args.text_hidden // 64)
        text = {"hidden_size": args.text_hidden, "intermediate_size": 4 * args.text_hidden,
                "num_hidden_layers": args.text_layers, "num_attention_heads": heads, "num_key_value_heads": heads}
        if args.family.startswith("qwen"):
            head_dim = args.text_hidden // heads
            quarter = head_dim // 2
            text.update(head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                            "mrope_section": [quarter - 2 * (quarter // 3),
                                                                              quarter // 3, quarter // 3]})
            vision = {"out_hidden_size": args.text_hidden}
            extra = {"max_pixels": args.image_size ** 2} if args.family == "qwen3_vl" else {}
            model, processor = build_tiny(args.family, text=text, vision=vision, **extra)
        else:
            model, processor = build_tiny(args.family, text=text)
    model.eval()
    processor.tokenizer.padding_side = "left"
    size = args.image_size if args.family != "llava" or args.model else 32
    images = example_images(args.batch, size)
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit is shown?"}]}]
    text_prompts = [processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)] * args.batch
    feed = [[im] for im in images] if spec.name == "smolvlm" else images
    stock = dict(processor(images=feed, text=text_prompts, return_tensors="pt", padding=True))

    peft_model = get_peft_model(model, FlexProjectorConfig(budgets=args.budgets,
                                                           budget_weights=[1.0] * len(args.budgets))).eval()
    lm = spec.get_module(peft_model.get_base_model(), "language_model")
    flex = FlexProcessor(processor)
    token_id = flex.image_token_id
    default_tokens = int((stock["input_ids"][0] == token_id).sum())

    cases: dict[str, dict[str, Any]] = {}
    with peft_model.disable_adapter():
        cases[f"default ({default_tokens} tokens)"] = {"batch": stock,
                                                       "lm": capture_lm_inputs(peft_model, lm, stock)}
    for budget in args.budgets:
        batch = dict(flex(images=feed, text=text_prompts, budget=budget, return_tensors="pt", padding=True))
        cases[f"flex {budget}"] = {"batch": batch, "lm": capture_lm_inputs(peft_model, lm, batch)}
    for case in cases.values():
        case["seq_len"] = int(case["batch"]["input_ids"].shape[1])
        case["visual_tokens"] = int((case["batch"]["input_ids"][0] == token_id).sum())

    baseline = next(iter(cases))

    def prefill(kwargs: dict[str, Any]):
        return lambda: lm(**kwargs)

    def full(name: str, batch: dict[str, Any]):
        def run():
            if name == baseline:
                with peft_model.disable_adapter():
                    return peft_model(**batch, use_cache=False)
            return peft_model(**batch, use_cache=False)
        return run

    with torch.no_grad():
        prefill_rows = compare({n: prefill(c["lm"]) for n, c in cases.items()}, baseline, repeats=args.repeats)
        full_rows = compare({n: full(n, c["batch"]) for n, c in cases.items()}, baseline, repeats=args.repeats)
    for name, case in cases.items():
        for rows in (prefill_rows, full_rows):
            rows[name].update(visual_tokens=case["visual_tokens"], seq_len=case["seq_len"])
    print_table("LLM prefill (language model only)", prefill_rows, baseline)
    print_table("full forward (vision + projector + LLM)", full_rows, baseline)
    print(f"{'case':<34} {'visual tokens':>14} {'sequence':>9}")
    for name, case in cases.items():
        print(f"{name:<34} {case['visual_tokens']:>14} {case['seq_len']:>9}")
    save("bench_flex_prefill", {"family": spec.name, "model": args.model or "tiny", "image_size": size,
                                "batch": args.batch, "prefill": prefill_rows, "full_forward": full_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
