"""Scale-out: the launch configs parse with the installed accelerate, tasks see the unwrapped model inside the DDP
forward, and (slow) every adapter method trains on two real CPU processes (torchrun, gloo) with only rank 0 writing
the run directory and, for the deterministic objectives, the same adapter as one process with the same global batch.

The GRPO tiny recipe on two processes (accelerate launch + ddp_cpu.yaml) is `tests/test_grpo.py`; both use the helper
`tests/multiproc_run.py`, which records per rank (outside the run directory) the world size, the optimizer steps and
every write into the run directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = ROOT / "recipes/accelerate"
HELPER = ROOT / "tests/multiproc_run.py"
# what a rank other than 0 may create in the run directory: the HF Trainer's own per-rank RNG state in a checkpoint
# (resuming that rank needs it; torch writes the file itself, the folder is created by every rank)
NON_MAIN_ALLOWED = re.compile(r"^os\.mkdir .*/checkpoints(/checkpoint-\d+)?$")


# ----------------------------------------------------------------------------------------------- configs


def test_ddp_cpu_config_starts_two_cpu_processes(monkeypatch):
    """`accelerate launch --config_file ddp_cpu.yaml` picks its torchrun launcher with 2 processes per node
    (accelerate's use_cpu / MULTI_CPU mode would start ONE process without an MPI hostfile: the config's old state);
    adaptune turns a launch without an accelerator into a 2-process gloo group on CPU. Launch: tests/test_grpo.py."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE / "ddp_cpu.yaml"), "train.py"])
    args, _, _ = _validate_launch_command(args)
    # accelerate.commands.launch.launch_command: `elif args.multi_gpu and not args.cpu: multi_gpu_launcher(args)`
    assert args.multi_gpu and not args.cpu and not args.use_deepspeed and not args.use_fsdp
    from accelerate.utils.launch import prepare_multi_gpu_env

    prepare_multi_gpu_env(args)  # what multi_gpu_launcher hands torchrun
    assert args.num_processes == 2 and int(args.nproc_per_node) == 2 and args.num_machines == 1


def test_a_cpu_launch_joins_a_gloo_group(monkeypatch):
    """Under torchrun without an accelerator, the run's process state asks accelerate for CPU (a plain PartialState
    would report one process, and every rank would prepare and write the run directory)."""
    from adaptune.train import lifecycle

    calls = []

    class FakeState:
        def __init__(self, cpu: bool = False) -> None:
            calls.append(cpu)

    monkeypatch.setattr("accelerate.PartialState", FakeState)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    lifecycle.process_state()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    lifecycle.process_state()
    assert calls == [True, False]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_follow_the_recipe(stage):
    """ZeRO-2 / ZeRO-3 through a DeepSpeed JSON whose batch, accumulation, clipping and precision are "auto" (the HF
    Trainer fills them from the recipe's TrainingArguments); parsed without importing deepspeed."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    config = load_config_from_file(str(ACCELERATE / f"deepspeed_zero{stage}.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED
    ds_file = ROOT / config.deepspeed_config["deepspeed_config_file"]
    assert set(config.deepspeed_config) <= {"deepspeed_config_file", "zero3_init_flag"}  # nothing overrides the JSON
    ds = HfDeepSpeedConfig(str(ds_file))
    assert ds.get_value("zero_optimization.stage") == stage and ds.is_zero3() == (stage == 3)
    for key in ("gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "train_batch_size",
                "gradient_clipping"):
        assert ds.get_value(key) == "auto", key
    if stage == 3:  # the adapter is gathered to rank 0 when saved
        assert ds.get_value("zero_optimization.stage3_gather_16bit_weights_on_model_save") is True
    assert any(re.match(r"deepspeed\b", e) for e in _extras())  # pip install 'adaptune[deepspeed]'


def _extras() -> list[str]:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(data["project"]["optional-dependencies"]["deepspeed"])


# ----------------------------------------------------------------------------------------------- forward_through


def _lora_clip():
    from peft import LoraConfig, get_peft_model

    from adaptune.models import build_tiny

    model, _ = build_tiny("clip", seed=0)
    return get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


def test_forward_through_without_a_wrapper_calls_the_function_on_the_model():
    from adaptune.methods.objective import forward_through

    model = _lora_clip()
    assert forward_through(model, lambda inner: inner) is model


def test_forward_through_ddp_gives_the_peft_model_inside_the_wrapper_forward(tmp_path):
    """On a real (1-process, gloo) DDP wrapper: the function gets the PeftModel (its methods, its type), runs inside
    DDP's forward (the reducer is armed: gradients arrive through the all-reduce), and the wrapper is left as it was."""
    import torch.distributed as dist
    from peft import PeftModel

    from adaptune.methods.objective import forward_through

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = _lora_clip()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        pixels = torch.randn(2, 3, 32, 32)
        seen = []

        def loss_fn(inner):
            seen.append(inner)
            out = inner.get_image_features(pixel_values=pixels)
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
            return out.pow(2).mean(), {"n": 2}

        loss, logs = forward_through(ddp, loss_fn)
        assert isinstance(seen[0], PeftModel) and seen[0] is model and logs == {"n": 2}
        loss.backward()
        grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and "vision_model" in n]
        assert grads and all(g is not None for g in grads)
        assert "forward" not in vars(model)  # the instance forward was restored
        with pytest.raises(AttributeError):
            ddp.get_image_features  # noqa: B018  (what tasks used to call)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- sharded saves


class _Gather:
    """The trainer's accelerator as `RunLifecycle.save_adapter` sees it, with ONE process (the H200 check's case)."""

    num_processes = 1

    def __init__(self, how: str) -> None:
        self.how = how

    def get_state_dict(self, model):
        if self.how == "module":  # what a gather that does not know FSDP 2 hands back: the DTensor parameters
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # accelerate's FSDP 2 branch of Accelerator.get_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                    cpu_offload=True))


@pytest.mark.parametrize("how", ["get_model_state_dict", "module"])
def test_an_fsdp2_sharded_adapter_is_gathered_before_it_is_saved(tmp_path, how):
    """FSDP 2 (fully_shard, a 1-process gloo group) turns the parameters into DTensors. PEFT's save of those fails
    as it did on the H200 ("Attempted to access the data pointer on an invalid python storage": a DTensor has no
    storage PEFT can read; its clone is a DTensor again), adaptune's save refuses them by name, and
    `RunLifecycle.save_adapter` gathers a sharded model whatever the world size (the H200 ran ONE process, where the
    gather used to be skipped) into plain CPU tensors: the saved adapter equals the weights before sharding."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import load_file
    from torch.distributed.fsdp import fully_shard

    from adaptune.adapters import AdapterSaveError, save_adapter
    from adaptune.models import build_tiny
    from adaptune.train.lifecycle import RunLifecycle, is_sharded

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        base, _ = build_tiny("qwen3_vl", seed=0)
        model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():  # a trained-looking adapter (LoRA's B starts at zero)
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_()
        expected = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        for layer in base.model.language_model.layers:
            fully_shard(layer)
        fully_shard(model)
        assert is_sharded(model)

        with pytest.raises(RuntimeError, match="invalid python storage"):
            model.save_pretrained(tmp_path / "peft")
        with pytest.raises(AdapterSaveError, match=r"\.weight is a sharded tensor"):
            save_adapter(model, tmp_path / "refused")
        assert not (tmp_path / "refused").exists()

        trainer = SimpleNamespace(accelerator=_Gather(how), model=model, model_wrapped=model)
        state = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
        life = RunLifecycle(SimpleNamespace(model=SimpleNamespace(source="tiny:qwen3_vl")), tmp_path / "run", state)
        life.save_adapter(trainer)
        saved = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
        assert saved.keys() == expected.keys() and saved
        for key, value in expected.items():
            torch.testing.assert_close(saved[key], value, rtol=0, atol=0, msg=key)
    finally:
        dist.destroy_process_group()


def test_clip_exposes_its_text_embeddings_to_fsdp_preparation():
    """accelerate's FSDP 2 preparation calls `get_input_embeddings()`, which CLIPModel and CLIPSeg do not implement
    (NotImplementedError: what stopped the CLIP recipes on the H200). adaptune's builders and loader give them the
    text tower's embeddings block: in the class's `_no_split_modules`, so transformer-based wrapping shards it as a
    group of its own and accelerate does not shard it (or the token embedding inside it) a second time."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import CLIPModel

    from adaptune.models import build_tiny, get_family

    for family, path in (("clip", "text_model.embeddings"), ("clipseg", "clip.text_model.embeddings")):
        model, _ = build_tiny(family, seed=0)
        embeddings = model.get_submodule(path)
        assert model.get_input_embeddings() is embeddings
        assert type(embeddings).__name__ in model._no_split_modules
        assert not any("get_input_embeddings" in k for k in model.state_dict())
        twin = copy.deepcopy(model)
        assert twin.get_input_embeddings() is twin.get_submodule(path)
        peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
        assert peft.get_input_embeddings() is embeddings
    plain = CLIPModel(build_tiny("clip", seed=0)[0].config)
    with pytest.raises(NotImplementedError):  # transformers itself still does not say: the fix is adaptune's
        plain.get_input_embeddings()
    siglip, _ = build_tiny("siglip", seed=0)  # a class that answers is left alone
    assert get_family("siglip").input_embeddings_path is None
    assert siglip.get_input_embeddings() is siglip.text_model.embeddings.token_embedding


# ----------------------------------------------------------------------------------------------- two processes


def _recipes(tmp_path: Path, vqa: Path, batch_size: int, tag: str,
             training: dict | None = None) -> dict[str, Path]:
    """One tiny recipe per adapter method (2 steps, a checkpoint at step 2; `training`: more training keys)."""
    vqa_params = {"dataset": str(vqa), "num_train": 16, "num_eval": 4, "answer_format": "plain", "max_new_tokens": 2}
    cases = {
        "lora": ("tiny:qwen3_vl", {"name": "vqa_sft", "params": vqa_params}, {"method": "lora", "params": {"r": 2}}),
        "mask_tuning": ("tiny:clip", {"name": "fewshot_clip", "params": {"shots": 2, "augment": False,
                                                                       "validation_per_class": 1, "test_per_class": 1}},
                        {"method": "mask_tuning", "params": {"gradient_dropout": False}}),
        "registers": ("tiny:clip", {"name": "register_distill", "params": {"dataset": "synthetic", "num_train": 8,
                                                                           "num_eval": 4}},
                      {"method": "registers", "params": {"num_registers": 2, "num_views": 2}}),
        "seg_adapter": ("tiny:clipseg", {"name": "segmentation", "params": {"num_train": 8, "num_eval": 4,
                                                                            "train_offset": 0}},
                        {"method": "seg_adapter", "params": {}}),
        "flex_projector": ("tiny:qwen3_vl", {"name": "flex_vqa", "params": vqa_params},
                           {"method": "flex_projector", "params": {"budgets": [1, 4], "budget_weights": [1, 1]}}),
    }
    paths = {}
    for method, (source, task, adapter) in cases.items():
        data = {"name": f"{method}-{tag}", "model": {"source": source}, "task": task, "adapter": adapter,
                "training": {"max_steps": 2, "per_device_train_batch_size": batch_size, "learning_rate": 1e-3,
                             "save_steps": 2, "logging_steps": 1, "eval_limit": 4, **(training or {})},
                "output": {"dir": str(tmp_path / "runs" / f"{method}-{tag}")}}
        paths[method] = tmp_path / f"{method}-{tag}.yaml"
        paths[method].write_text(yaml.safe_dump(data))
    return paths


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT)}


def check_ranks(spy: Path, name: str, run_dir: Path, steps: int) -> None:
    """Both ranks saw a world of 2 and took `steps` optimizer steps; only rank 0 wrote run files."""
    records = [json.loads((spy / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1] and {r["world_size"] for r in records} == {2}, records
    assert [r["steps"] for r in records] == [steps, steps], records
    assert {r["backend"] for r in records} == {"gloo"}
    main_writes = " ".join(records[0]["writes"])
    assert "/DONE" in main_writes and "/adapter" in main_writes  # the hook does see the main process's writes
    strays = [w for w in records[1]["writes"] if not NON_MAIN_ALLOWED.match(w)]
    assert not strays, f"rank 1 wrote into the run directory: {strays}"
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["world_size"] == 2
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["event"] == "final" and final["world_size"] == 2
    ckpt = run_dir / "checkpoints" / f"checkpoint-{steps}"
    assert (ckpt / "COMPLETE").exists() and {p.name for p in ckpt.glob("rng_state_*.pth")} == {
        "rng_state_0.pth", "rng_state_1.pth"}


@pytest.mark.slow
def test_every_adapter_method_trains_on_two_processes(tmp_path, vqa_dataset_dir):
    """One `torchrun --nproc_per_node 2` launch runs a 2-step recipe of every method (gloo, CPU, 4 rows per rank);
    the deterministic ones (no per-row random draws, a per-row mean loss) give the adapter of one process with the
    same global batch (8 rows): the gradients really were averaged across the ranks."""
    from safetensors.torch import load_file

    from adaptune.config import load_recipe
    from adaptune.train import run_recipe

    two = _recipes(tmp_path, vqa_dataset_dir, batch_size=4, tag="two")
    spy = tmp_path / "spy"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HELPER),
           str(spy), *map(str, two.values())]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for method in two:
        run_dir = tmp_path / "runs" / f"{method}-two"
        assert (run_dir / "DONE").exists() and (run_dir / "adapter" / "adapter_model.safetensors").exists(), method
        check_ranks(spy, f"{method}-two", run_dir, steps=2)

    one = _recipes(tmp_path, vqa_dataset_dir, batch_size=8, tag="one")
    for method in ("mask_tuning", "registers", "seg_adapter"):
        single = load_file(run_recipe(load_recipe(one[method])) / "adapter" / "adapter_model.safetensors")
        double = load_file(tmp_path / "runs" / f"{method}-two" / "adapter" / "adapter_model.safetensors")
        assert single.keys() == double.keys()
        for key in single:
            torch.testing.assert_close(double[key], single[key], rtol=1e-4, atol=1e-5, msg=f"{method}: {key}")


# ----------------------------------------------------------------------------------------------- FSDP 2 on CPU

# what a rank other than 0 writes in a run directory under FSDP with SHARDED_STATE_DICT (recipes/accelerate/fsdp.yaml):
# besides the RNG state, its own shard of the model and optimizer state in the checkpoint (resuming needs them)
NON_MAIN_ALLOWED_FSDP = re.compile(
    r"^(os\.mkdir .*/checkpoints(/checkpoint-\d+(/(pytorch_model_fsdp|optimizer)_0)?)?"
    r"|open .*/checkpoints/checkpoint-\d+/(pytorch_model_fsdp|optimizer)_0/__1_0\.distcp)$")


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_saves_the_ddp_adapter(tmp_path, vqa_dataset_dir):
    """accelerate's own FSDP 2 (`recipes/accelerate/fsdp.yaml`, 2 processes, gloo) on CPU: accelerate would run DDP
    there, so the helper's `--cpu-fsdp` lets it pick FSDP (tests/multiproc_run.py says how). LoRA and TokenFLEX
    (Qwen3-VL) train sharded, the adapter is gathered through the trainer's accelerator and equals the one DDP trains
    in the same launch (same seeds, same per-rank batches); evaluation mid-run (every step) and at the end runs on
    every rank inside `lifecycle.gathered` and gives the DDP run's figures."""
    from safetensors.torch import load_file

    methods = ("lora", "flex_projector")
    runs = {tag: {m: p for m, p in _recipes(tmp_path, vqa_dataset_dir, batch_size=4, tag=tag,
                                            training={"eval_steps": 1}).items() if m in methods}
            for tag in ("fsdp", "ddp")}
    spy = tmp_path / "spy"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "fsdp.yaml"),
           "--num_processes", "2", "--mixed_precision", "no", str(HELPER), "--cpu-fsdp", str(spy),
           *(str(runs[tag][m]) for m in methods for tag in ("fsdp", "ddp"))]
    proc = subprocess.run(cmd, cwd=ROOT, env={**_env(), "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for method in methods:
        records = {tag: [json.loads((spy / f"{method}-{tag}.rank{r}.json").read_text()) for r in (0, 1)]
                   for tag in ("fsdp", "ddp")}
        for tag, sharded in (("fsdp", True), ("ddp", False)):
            for r in records[tag]:
                assert r["world_size"] == 2 and r["steps"] == 2 and r["backend"] == "gloo", r
                assert r["sharded"] is sharded and (r["dtensors"] > 0) is sharded, r
                assert r["distributed_type"].endswith("FSDP" if sharded else "MULTI_CPU"), r
        strays = [w for w in records["fsdp"][1]["writes"] if not NON_MAIN_ALLOWED_FSDP.match(w)]
        assert not strays, f"rank 1 wrote into the run directory: {strays}"
        assert any(w.endswith("__1_0.distcp") for w in records["fsdp"][1]["writes"])  # its shard of the checkpoint

        run = {tag: tmp_path / "runs" / f"{method}-{tag}" for tag in ("fsdp", "ddp")}
        fsdp, ddp = (load_file(run[t] / "adapter" / "adapter_model.safetensors") for t in ("fsdp", "ddp"))
        assert fsdp.keys() == ddp.keys() and fsdp
        for key in ddp:
            torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-5, atol=1e-6, msg=f"{method}: {key}")
        if method == "lora":  # trained: LoRA's B starts at zero
            assert any(float(v.abs().max()) > 0 for k, v in fsdp.items() if "lora_B" in k)

        def figures(path: Path) -> list[dict]:
            out = []
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["event"] in ("eval", "final"):
                    out.append({k: v for k, v in record.items() if "latency" not in k})
            return out

        evals = {t: figures(run[t] / "metrics.jsonl") for t in ("fsdp", "ddp")}
        assert [e["step"] for e in evals["fsdp"]] == [1, 2, 2]  # mid-run at steps 1 and 2, then the final record
        assert evals["fsdp"] == evals["ddp"], method


def test_a_method_that_does_not_train_sharded_is_refused_under_fsdp(tmp_path, vqa_dataset_dir):
    """mask tuning and registers failed or trained wrong under accelerate's FSDP 2 (docs/scaling.md): a run whose
    trainer shards the model is refused before the first step, naming the recipe key; LoRA passes, and so does any
    method when the trainer does not shard."""
    from types import SimpleNamespace

    from adaptune.config import RecipeError, load_recipe
    from adaptune.registry import METHODS
    from adaptune.train.runner import check_sharding

    recipes = _recipes(tmp_path, vqa_dataset_dir, batch_size=2, tag="x")
    sharded, replicated = SimpleNamespace(is_fsdp_enabled=True), SimpleNamespace(is_fsdp_enabled=False)
    for method in ("mask_tuning", "registers"):
        assert METHODS.get(method).fsdp is False
        recipe = load_recipe(recipes[method])
        with pytest.raises(RecipeError, match=rf"{method}-x\.yaml: adapter\.method: '{method}' does not train"):
            check_sharding(recipe, sharded)
        check_sharding(recipe, replicated)
    for method in ("lora", "flex_projector"):  # shown on CPU by test_fsdp2_on_two_cpu_processes_saves_the_ddp_adapter
        check_sharding(load_recipe(recipes[method]), sharded)
