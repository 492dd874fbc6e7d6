"""FSDP check on GPUs: adapter recipes under `recipes/accelerate/fsdp.yaml` give the adapter of a plain run.

    python benchmarks/fsdp_check.py [--out benchmarks/results]      # needs CUDA; uses every visible GPU

For two tiny Qwen3-VL recipes of tests/test_scale_out.py (lora, flex_projector on generated GlyphQA; 2 steps, 8 rows
a step): one plain process, then `accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes
<GPUs> --mixed_precision no` (FSDP 2: parameters sharded with fully_shard, the adapter gathered through
`accelerator.get_state_dict` when saved, evaluation on every rank), through tests/multiproc_run.py, which records
each rank's world size, steps, writes and how the trainer distributed the model (`distributed_type`, `sharded`,
`dtensors`). Writes fsdp_check.json: per recipe, the largest difference between the two adapters, and the ranks'
records. `bash benchmarks/gpu.sh fsdp` runs it. accelerate runs an FSDP config on CPU as plain DDP, so this needs
GPUs; on CPU, tests/test_scale_out.py runs accelerate's FSDP 2 code on 2 processes through the helper's --cpu-fsdp.

What it confirms on a GPU: the adapter save under FSDP 2 (the H200 run of 2026-11-29 failed with "Attempted to access
the data pointer on an invalid python storage": with ONE process the gather was skipped and PEFT read the module's
DTensor parameters; reproduced and fixed on CPU, see docs/scaling.md) and evaluation under FSDP (`gathered`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()
    from safetensors.torch import load_file
    from test_scale_out import _recipes

    from adaptune.config import load_recipe
    from adaptune.train import run_recipe

    gpus = torch.cuda.device_count()
    if not gpus:
        print("fsdp_check needs CUDA")
        return 2
    work = Path(tempfile.mkdtemp(prefix="adaptune-fsdp-"))
    # Qwen3-VL recipes. The CLIP ones (mask_tuning, registers) get past get_input_embeddings now, then stop at
    # CLIPModel's scalar `logit_scale`, which fully_shard refuses (docs/scaling.md)
    methods = ("lora", "flex_projector")
    per_rank = 8 // gpus if 8 % gpus == 0 else 8
    sharded = {m: p for m, p in _recipes(work, Path("glyphqa"), batch_size=per_rank, tag="fsdp").items()
               if m in methods}
    single = {m: p for m, p in _recipes(work, Path("glyphqa"), batch_size=per_rank * gpus, tag="one").items()
              if m in methods}
    t0 = time.perf_counter()
    for method in methods:
        run_recipe(load_recipe(single[method]))
    t_single = time.perf_counter() - t0
    spy = work / "spy"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes/accelerate/fsdp.yaml"), "--num_processes", str(gpus), "--mixed_precision", "no",
           str(ROOT / "tests/multiproc_run.py"), str(spy), *map(str, sharded.values())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    t_fsdp = time.perf_counter() - t0
    result: dict = {"gpus": gpus, "returncode": proc.returncode, "single_seconds": round(t_single, 1),
                    "fsdp_seconds": round(t_fsdp, 1), "recipes": {}}
    if proc.returncode:
        result["log_tail"] = (proc.stdout[-3000:] + proc.stderr[-6000:])
    for method in methods:
        entry: dict = {}
        try:
            a = load_file(work / "runs" / f"{method}-one" / "adapter" / "adapter_model.safetensors")
            b = load_file(work / "runs" / f"{method}-fsdp" / "adapter" / "adapter_model.safetensors")
            entry["same_keys"] = sorted(a) == sorted(b)
            entry["max_abs_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
            entry["ranks"] = [json.loads((spy / f"{method}-fsdp.rank{r}.json").read_text()) for r in range(gpus)]
            for r in entry["ranks"]:
                r["writes"] = len(r["writes"])
            entry["sharded"] = all(r.get("sharded") for r in entry["ranks"])
            entry["eval"] = json.loads((work / "runs" / f"{method}-fsdp" / "eval.json").read_text())
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {exc}"
        result["recipes"][method] = entry
        print(method, {k: v for k, v in entry.items() if k in ("same_keys", "max_abs_diff", "sharded", "error")},
              flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fsdp_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out / 'fsdp_check.json'}: rc {proc.returncode}, single {t_single:.1f} s, fsdp {t_fsdp:.1f} s")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
