"""adaptune's own code on one GPU at real model sizes (random weights built from real configs, no download).

    bash benchmarks/gpu.sh                          # one H200: < 10 minutes -> benchmarks/results/gpu_bench.json
    python benchmarks/gpu_bench.py --smoke          # tiny sizes on CPU (the default test suite runs this)

What runs, all through adaptune:
  1. TokenFLEX prefill: the `flex_projector` adapter (adaptune.methods.flex_projector) on Qwen3-VL-2B and
     Qwen2.5-VL-7B shapes; the language model's prefill on exactly the inputs it receives (captured by a pre-hook)
     at 64 / 144 / 256 visual tokens per image against the stock processor's token count (adapter disabled), timed
     interleaved with CUDA syncs, median of repeats;
  2. the judge: a Qwen3-1.7B-shaped causal LM served by `transformers serve` (OpenAI-compatible; adaptune's `openai`
     judge) when its serving extra is importable, otherwise adaptune's in-process `hf` judge; verdicts per second;
  3. GRPO: the resize-tool recipe (recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml: the VisionThink environment,
     reward and LoRA) on the Qwen3-VL-2B shapes, run by `adaptune.train.run_recipe` (the run-directory lifecycle
     around stock TRL's GRPOTrainer), generation by vLLM in colocate mode when vLLM is installed, else
     transformers; the reward's judge is the one from 2 (an unparsable verdict falls back to the rule judge);
  4. peak GPU memory of each part.
Random weights: the figures are costs (time, memory), not quality. One JSON: --out/gpu_bench.json.

The real sizes (from the models' published config.json files, written here so nothing is downloaded): Qwen3-VL-2B
(text 2048 x 28 layers, 16 heads / 8 KV, MLP 6144; vision 1024 x 24, patch 16, deepstack 5/11/17), Qwen2.5-VL-7B
(text 3584 x 28, 28 heads / 4 KV, MLP 18944; vision 1280 x 32, patch 14, MLP 3420, window 112), Qwen3-1.7B (text
2048 x 28, 16 heads / 8 KV, MLP 6144). The tokenizer is adaptune's small offline one; the embedding keeps the real
vocabulary size (151936 / 152064 rows), so the LM head costs what it costs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import capture_lm_inputs, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRPO_RECIPE = ROOT / "recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml"

REAL = {
    "qwen3_vl_2b": dict(family="qwen3_vl", max_pixels=1024 * 1024, text=dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                         "mrope_interleaved": True}),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])),
    "qwen2_5_vl_7b": dict(family="qwen2_5_vl", max_pixels=1024 * 1024, text=dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, head_dim=128, max_position_embeddings=32768, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31])),
    "judge_qwen3_1_7b": dict(family="qwen3", text=dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, tie_word_embeddings=True)),
}
SMOKE = {  # the tiny builders' own sizes
    "qwen3_vl_2b": dict(family="qwen3_vl", max_pixels=256 * 256, text=None, vision=None),
    "qwen2_5_vl_7b": dict(family="qwen2_5_vl", max_pixels=224 * 224, text=None, vision=None),
    "judge_qwen3_1_7b": dict(family="qwen3", text=dict(vocab_size=512, hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=2, num_attention_heads=2,
                                                       num_key_value_heads=1, head_dim=16)),
}
JUDGE_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def section(results: dict[str, Any], name: str, path: Path | None = None):
    """Time a part, record its peak memory, and keep going when it fails (the error goes into the JSON, which is
    rewritten after every part, so a run cut short by its time limit still leaves the parts it finished)."""
    reset_peak()
    t0 = time.perf_counter()
    entry = results.setdefault(name, {})
    log(f"{name} ...")
    try:
        yield entry
        entry["ok"] = True
    except Exception as exc:  # noqa: BLE001 - a benchmark reports every part it could run
        entry.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
        log(f"{name} FAILED: {type(exc).__name__}: {exc}")
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    entry["peak_memory_gb"] = peak_gb()
    log(f"{name} done in {entry['seconds']} s (peak {entry['peak_memory_gb']} GB)")
    if path is not None:
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def build_vlm(name: str, sizes: dict[str, Any], device: str, dtype: torch.dtype):
    """A VLM of the named shape from adaptune's builders (random, seeded), on `device` in `dtype`."""
    from adaptune.models.tiny import tiny_qwen2_5_vl, tiny_qwen3_vl

    spec = sizes[name]
    builder = tiny_qwen3_vl if spec["family"] == "qwen3_vl" else tiny_qwen2_5_vl
    with torch.device(device):
        model, processor = builder(seed=0, text=spec["text"], vision=spec["vision"], max_pixels=spec["max_pixels"])
    model = model.to(dtype).eval()
    log(f"  {name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters on {device}")
    return model, processor


def on(batch: dict[str, Any], device: str, dtype: torch.dtype) -> dict[str, Any]:
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
            for k, v in batch.items()}


@torch.no_grad()
def flex_prefill(name: str, sizes: dict[str, Any], device: str, dtype: torch.dtype, image_size: int,
                 budgets: list[int], batch: int, repeats: int) -> dict[str, Any]:
    """LM prefill at each TokenFLEX budget vs the stock processor's visual-token count (adapter disabled)."""
    from peft import get_peft_model

    from adaptune.methods.flex_projector import FlexProcessor, FlexProjectorConfig
    from adaptune.models import get_family
    from adaptune.models.inputs import example_images

    model, processor = build_vlm(name, sizes, device, dtype)
    spec = get_family(sizes[name]["family"])
    peft_model = get_peft_model(model, FlexProjectorConfig(budgets=budgets, budget_weights=[1.0] * len(budgets)))
    peft_model = peft_model.to(device, dtype).eval()
    lm = spec.get_module(peft_model.get_base_model(), "language_model")
    processor.tokenizer.padding_side = "left"
    images = example_images(batch, image_size)
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit is shown?"}]}]
    prompts = [processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)] * batch
    stock = on(dict(processor(images=images, text=prompts, return_tensors="pt", padding=True)), device, dtype)
    flex = FlexProcessor(processor)
    token_id = flex.image_token_id
    default_tokens = int((stock["input_ids"][0] == token_id).sum())
    cases: dict[str, dict[str, Any]] = {}
    with peft_model.disable_adapter():
        cases[f"default ({default_tokens} tokens)"] = {"batch": stock, "lm": capture_lm_inputs(peft_model, lm, stock)}
    for budget in budgets:
        flex_batch = on(dict(flex(images=images, text=prompts, budget=budget, return_tensors="pt", padding=True)),
                        device, dtype)
        cases[f"flex {budget}"] = {"batch": flex_batch, "lm": capture_lm_inputs(peft_model, lm, flex_batch)}
    times: dict[str, list[float]] = {n: [] for n in cases}
    for rep in range(repeats + 1):  # interleaved; repeat 0 warms up
        for case_name, case in cases.items():
            sync()
            t0 = time.perf_counter()
            lm(**case["lm"])
            sync()
            if rep:
                times[case_name].append(time.perf_counter() - t0)
    baseline = statistics.median(times[next(iter(cases))])
    rows = {}
    for case_name, case in cases.items():
        median = statistics.median(times[case_name])
        rows[case_name] = {"visual_tokens": int((case["batch"]["input_ids"][0] == token_id).sum()),
                           "seq_len": int(case["batch"]["input_ids"].shape[1]), "median_ms": round(median * 1e3, 3),
                           "speedup_vs_default": round(baseline / median, 3)}
        log(f"  {case_name:<24} {rows[case_name]['visual_tokens']:>5} visual tokens  "
            f"{rows[case_name]['median_ms']:9.2f} ms  x{rows[case_name]['speedup_vs_default']:.2f}")
    del peft_model, model
    return {"model": name, "image_size": image_size, "batch": batch, "repeats": repeats, "cases": rows}


def save_judge_model(sizes: dict[str, Any], device: str, dtype: torch.dtype, folder: Path) -> Path:
    """A Qwen3-shaped causal LM (random) with adaptune's offline tokenizer and a plain chat template, saved."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from adaptune.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.chat_template = JUDGE_TEMPLATE
    text = dict(sizes["judge_qwen3_1_7b"]["text"])
    config = Qwen3Config(**text, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    model.to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    log(f"  judge LM: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters -> {folder}")
    del model
    return folder


def serving_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn", "openai", "pydantic"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: Path, device: str, log_file: Path, wait_s: float = 180.0):
    """`transformers serve FOLDER` in its own process group; (process, base_url), or (None, reason)."""
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe), "serve"] if exe.exists() else [sys.executable, "-m", "transformers.cli.transformers", "serve"]
    port = free_port()
    cmd += [str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = open(log_file, "wb")  # noqa: SIM115 - the server's log, closed by the process's end
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-800:]
            return None, f"transformers serve exited with {proc.returncode}: {tail}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    tail = log_file.read_text(errors="replace")[-800:]
    return None, f"transformers serve was not healthy after {wait_s:.0f} s: {tail}"


def stop_server(proc) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def judge_throughput(spec: dict[str, Any], n: int) -> dict[str, Any]:
    """`n` verdicts through adaptune's judge built from `spec` (what a recipe's grpo.reward.judge holds)."""
    from adaptune.rl.judges import JudgeItem, build_judge

    judge = build_judge({**spec, "on_failure": "zero"})
    items = [JudgeItem(f"What is {i} + {i}?", str(2 * i), str(2 * i + i % 2)) for i in range(n)]
    judge.score_sync(items[: min(4, n)])  # warm-up
    t0 = time.perf_counter()
    verdicts = judge.score_sync(items)
    seconds = time.perf_counter() - t0
    stats = {k: v for k, v in judge.stats().items() if isinstance(v, (int, float))}
    with contextlib.suppress(Exception):
        judge.close()
    return {"items": n, "score_seconds": round(seconds, 3), "verdicts_per_s": round(n / seconds, 2),
            "parsed": sum(v.score is not None for v in verdicts), "stats": stats}


def grpo_run(model_dir: Path, out_dir: Path, judge_spec: dict[str, Any], steps: int, smoke: bool) -> dict[str, Any]:
    """The resize-tool GRPO recipe on the saved model, through adaptune.train.run_recipe (stock TRL inside)."""
    from adaptune.config import load_recipe
    from adaptune.train import run_recipe

    overrides = [f"model.source={model_dir}", f"output.dir={out_dir}", "output.overwrite=true",
                 f"training.max_steps={steps}", "training.save_steps=1000", "training.logging_steps=1",
                 "grpo.eval.num_images=2" if smoke else "grpo.eval.num_images=4"]
    if not smoke:
        overrides += ["model.dtype=bfloat16", "training.bf16=true", "training.per_device_train_batch_size=16",
                      "grpo.trainer.num_generations=8", "grpo.data.num_samples=64", "grpo.env.turn_tokens=48"]
    recipe = load_recipe(GRPO_RECIPE, overrides)
    recipe.grpo["reward"]["judge"] = {**judge_spec, "on_failure": "fallback", "fallback": "rule"}
    vllm = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if vllm:
        recipe.grpo["trainer"].update(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3)
    run_dir = run_recipe(recipe)
    summary = json.loads((run_dir / "eval.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("event") == "train" and "reward" in r]
    keep = ("steps", "train_seconds", "seconds_per_step", "world_size", "num_generations", "max_completion_length",
            "trainable_params", "total_params", "wall_seconds")
    return {"generation": "vllm colocate" if vllm else "transformers generate", "judge": judge_spec["name"],
            **{k: summary.get(k) for k in keep},
            "per_step": [{k: r.get(k) for k in ("step", "reward", "step_time", "completions/mean_length",
                                                "visionthink/resize_rate") if k in r} for r in train]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU): checks that every part runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps (default 3; smoke 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["prefill", "judge", "grpo"])
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    sizes = SMOKE if args.smoke else REAL
    steps = args.steps or (1 if args.smoke else 3)
    if not cuda:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    results: dict[str, Any] = {"machine": machine(), "smoke": args.smoke, "device": device, "dtype": str(dtype),
                               "versions": {m: _version(m) for m in ("torch", "transformers", "peft", "trl",
                                                                       "accelerate", "vllm")}}
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("gpu_bench_smoke.json" if args.smoke else "gpu_bench.json")
    work = Path(tempfile.mkdtemp(prefix="adaptune-gpu-"))
    server = None
    try:
        if "prefill" not in args.skip:
            for name in ("qwen3_vl_2b", "qwen2_5_vl_7b"):
                with section(results, f"prefill_{name}", path) as entry:
                    entry.update(flex_prefill(
                        name, sizes, device, dtype, image_size=128 if args.smoke else 896,
                        budgets=[1, 4] if args.smoke else [64, 144, 256], batch=2 if args.smoke else 4,
                        repeats=2 if args.smoke else 10))
        judge_spec: dict[str, Any] = {"name": "rule"}
        if "judge" not in args.skip:
            with section(results, "judge", path) as entry:
                folder = save_judge_model(sizes, device, dtype, work / "judge")
                if cuda and serving_available():
                    server, url = start_server(folder, device, work / "serve.log")
                    if server is not None:
                        judge_spec = {"name": "openai", "base_url": url, "model": str(folder), "max_tokens": 16,
                                      "concurrency": 8, "timeout_s": 60.0, "max_retries": 1, "trust_env": False}
                    else:
                        entry["serve_error"] = url
                if judge_spec["name"] == "rule":
                    judge_spec = {"name": "hf", "model_path": str(folder), "device": device,
                                  "dtype": "bfloat16" if cuda else "float32", "max_new_tokens": 16, "batch_size": 16}
                entry["backend"] = "transformers serve (openai judge)" if server is not None else "hf (in-process)"
                entry.update(judge_throughput(judge_spec, n=8 if args.smoke else 64))
                log(f"  judge {entry['backend']}: {entry['verdicts_per_s']} verdicts/s")
        if "grpo" not in args.skip:
            with section(results, "grpo_qwen3_vl_2b", path) as entry:
                model, processor = build_vlm("qwen3_vl_2b", sizes, device, dtype)
                model.save_pretrained(work / "policy")
                processor.save_pretrained(work / "policy")
                del model
                reset_peak()
                entry.update(grpo_run(work / "policy", work / "grpo-run", judge_spec, steps, args.smoke))
                log(f"  GRPO: {entry.get('seconds_per_step')} s/step over {entry.get('steps')} steps "
                    f"({entry['generation']}, judge {entry['judge']})")
    finally:
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {path} ({results['total_seconds']} s)")
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False]
    return 1 if failed else 0


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
