"""Real-size GPU benchmark: Qwen3-VL 2B / 8B shapes built from configs with random weights (no download).

Needs only torch, transformers and peft (the GPU machine has no trl, datasets or omegaconf, and no package index), so
it does not import adaptune. It measures:
  1. LLM prefill time at flex visual-token budgets (64 / 144 / 256) relative to the full-resolution token count;
  2. a few GRPO-style steps with LoRA: sample G completions per prompt with `generate`, score them, group-normalised
     advantages, clipped policy-gradient loss, backward, AdamW step: step time, generated tokens/s, peak memory.

    bash benchmarks/gpu.sh                 # both presets, < 8 minutes on one H200
    python benchmarks/gpu_bench.py --preset tiny --device cpu     # smoke run anywhere
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END, EOS = 151655, 151656, 151652, 151653, 151645

PRESETS = {
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, mrope=[2, 3, 3]),
                 vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, deepstack=[0])),
    "2b": dict(text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                         num_key_value_heads=8, head_dim=128, mrope=[24, 20, 20]),
               vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, deepstack=[5, 11, 17])),
    "8b": dict(text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, mrope=[24, 20, 20]),
               vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, deepstack=[8, 16, 24])),
}


def build(preset: str, device: str, dtype: torch.dtype) -> Qwen3VLForConditionalGeneration:
    p = PRESETS[preset]
    t, v = dict(p["text"]), dict(p["vision"])
    mrope = t.pop("mrope")
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=preset != "8b",
                         rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": mrope,
                                          "mrope_interleaved": True}, **t),
        vision_config=dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=t["hidden_size"],
                           num_position_embeddings=2304, deepstack_visual_indexes=v.pop("deepstack"), **v),
        image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config)
    torch.set_default_dtype(previous)
    return model.eval()


def image_inputs(side: int, batch: int, prompt_len: int, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A batch of `side` x `side` random images with their placeholder tokens and a random text prompt."""
    grid = side // 16
    n_tokens = (grid // 2) ** 2
    ids = []
    for _ in range(batch):
        text = torch.randint(1000, 100000, (prompt_len,)).tolist()
        ids.append([VISION_START] + [IMAGE_PAD] * n_tokens + [VISION_END] + text)
    input_ids = torch.tensor(ids, device=device)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == IMAGE_PAD).long(),
        "pixel_values": torch.randn(batch * grid * grid, 3 * 2 * 16 * 16, device=device, dtype=dtype),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * batch, device=device),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def bench_prefill(model, device: str, dtype: torch.dtype, full_tokens: int, budgets: list[int], repeats: int) -> dict:
    """LM prefill with `n` visual tokens (what a flex projector leaves) vs the full-resolution count."""
    lm = model.model.language_model
    hidden = model.config.text_config.hidden_size
    times: dict[int, list[float]] = {n: [] for n in [full_tokens, *budgets]}
    for rep in range(repeats + 1):
        for n in times:
            embeds = torch.randn(4, n + 64, hidden, device=device, dtype=dtype)
            sync(device)
            t0 = time.perf_counter()
            lm(inputs_embeds=embeds)
            sync(device)
            if rep:
                times[n].append(time.perf_counter() - t0)
    base = statistics.median(times[full_tokens])
    return {str(n): {"median_s": statistics.median(v), "speedup_vs_full": base / statistics.median(v)}
            for n, v in times.items()}


def grpo_steps(model, device: str, dtype: torch.dtype, steps: int, prompts: int, group: int, new_tokens: int,
               side: int) -> dict:
    """GRPO-style steps on a LoRA policy (generation with transformers `generate`)."""
    policy = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    optim = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)
    suppress = [IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END]
    records = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 1):
        batch = image_inputs(side, prompts, 32, device, dtype)
        batch = {k: (v.repeat_interleave(group, 0) if k not in ("pixel_values", "image_grid_thw") else
                     (v.repeat(group, 1) if k == "image_grid_thw" else v.repeat(group, 1)))
                 for k, v in batch.items()}
        batch["image_grid_thw"] = batch["image_grid_thw"][: prompts * group]
        sync(device)
        t0 = time.perf_counter()
        policy.eval()
        with torch.no_grad():
            out = policy.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                                  temperature=1.0, suppress_tokens=suppress, pad_token_id=EOS)
        sync(device)
        t_gen = time.perf_counter() - t0
        completion = out[:, batch["input_ids"].shape[1]:]
        rewards = (completion % 7 == 0).float().mean(1)  # a stand-in scalar reward per completion
        grouped = rewards.view(prompts, group)
        adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).flatten()
        policy.train()
        full = {**batch, "input_ids": out, "attention_mask": torch.ones_like(out),
                "mm_token_type_ids": (out == IMAGE_PAD).long()}
        t1 = time.perf_counter()
        logits = policy(**full).logits[:, batch["input_ids"].shape[1] - 1:-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - logp.detach())
        loss = -(torch.minimum(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None])).mean()
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        sync(device)
        t_train = time.perf_counter() - t1
        if step:  # step 0 is warm-up
            records.append({"generate_s": t_gen, "train_s": t_train, "step_s": t_gen + t_train,
                            "gen_tokens_per_s": completion.numel() / t_gen})
    result = {k: statistics.median(r[k] for r in records) for k in records[0]}
    if device.startswith("cuda"):
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    result.update(prompts=prompts, group=group, new_tokens=new_tokens, image_side=side)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=list(PRESETS), default="2b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    tiny = args.preset == "tiny"
    t0 = time.perf_counter()
    model = build(args.preset, args.device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{args.preset}] built {n_params / 1e9:.2f}B parameters in {time.perf_counter() - t0:.1f} s "
          f"on {args.device}", flush=True)
    prefill = bench_prefill(model, args.device, dtype, full_tokens=64 if tiny else 1024,
                            budgets=[4, 9, 16] if tiny else [64, 144, 256], repeats=3 if tiny else 10)
    for n, r in prefill.items():
        print(f"  prefill with {n:>5} visual tokens: {r['median_s'] * 1e3:8.2f} ms   "
              f"speed-up vs full {r['speedup_vs_full']:.2f}x", flush=True)
    grpo = grpo_steps(model, args.device, dtype, steps=args.steps, prompts=2 if tiny else 8, group=2 if tiny else 8,
                      new_tokens=8 if tiny else 128, side=64 if tiny else 448)
    print(f"  GRPO step: {grpo['step_s']:.2f} s (generate {grpo['generate_s']:.2f} s, train {grpo['train_s']:.2f} s), "
          f"{grpo['gen_tokens_per_s']:.0f} generated tokens/s, peak memory {grpo.get('peak_memory_gb', 0):.1f} GB")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__, "params": n_params}
    (out / f"gpu_{args.preset}.json").write_text(json.dumps({"machine": info, "prefill": prefill, "grpo": grpo},
                                                            indent=2) + "\n")


if __name__ == "__main__":
    main()
