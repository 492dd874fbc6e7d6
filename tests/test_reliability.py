"""Faults injected on purpose: wrong or damaged adapters, interrupted saves, kill -9 during training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from adaptune.adapters import AdapterLoadError, load_adapter, save_adapter
from adaptune.models import build_tiny
from adaptune.utils.io import atomic_dir


def lora_on(family: str, **text):
    model, _ = build_tiny(family, seed=0, text=text or None)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    return peft_model


@pytest.fixture
def adapter_dir(tmp_path):
    return save_adapter(lora_on("qwen3_vl"), tmp_path / "adapter")


def test_good_adapter_loads(adapter_dir):
    base, _ = build_tiny("qwen3_vl", seed=0)
    assert load_adapter(base, adapter_dir) is not None


def test_adapter_for_other_base_is_refused_before_loading(adapter_dir):
    other, _ = build_tiny("qwen3_vl", seed=0, text={"hidden_size": 96, "intermediate_size": 128})
    with pytest.raises(AdapterLoadError, match=r"another base model.*text_config\.hidden_size: adapter expects 64, "
                                               r"model has 96"):
        load_adapter(other, adapter_dir)
    llava, _ = build_tiny("llava", seed=0)
    with pytest.raises(AdapterLoadError, match="model_type: adapter expects 'qwen3_vl', model has 'llava'"):
        load_adapter(llava, adapter_dir)


def test_missing_and_corrupt_files(adapter_dir, tmp_path):
    base, _ = build_tiny("qwen3_vl", seed=0)
    weights = adapter_dir / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(AdapterLoadError, match="corrupt or truncated"):
        load_adapter(base, adapter_dir)
    weights.unlink()
    with pytest.raises(AdapterLoadError, match="no adapter_model.safetensors"):
        load_adapter(base, adapter_dir)
    (adapter_dir / "adapter_config.json").unlink()
    with pytest.raises(AdapterLoadError, match="no adapter_config.json"):
        load_adapter(base, adapter_dir)
    with pytest.raises(AdapterLoadError, match="does not exist"):
        load_adapter(base, tmp_path / "nowhere")


def test_adapter_from_newer_adaptune_is_refused(adapter_dir):
    meta = json.loads((adapter_dir / "adaptune.json").read_text())
    meta["adaptune_version"] = "99.0.0"
    (adapter_dir / "adaptune.json").write_text(json.dumps(meta))
    base, _ = build_tiny("qwen3_vl", seed=0)
    with pytest.raises(AdapterLoadError, match="newer than this adaptune"):
        load_adapter(base, adapter_dir)


def test_interrupted_save_keeps_previous_adapter(adapter_dir):
    before = load_file(adapter_dir / "adapter_model.safetensors")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(adapter_dir) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt  # a kill in the middle of save_pretrained
    after = load_file(adapter_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not [p for p in adapter_dir.parent.iterdir() if p.name.startswith(".adapter.tmp")]


def _recipe_file(tmp_path: Path, dataset: Path, steps: int) -> Path:
    text = f"""
name: killtest
model: {{source: "tiny:qwen3_vl"}}
task: {{name: vqa_sft, params: {{dataset: "{dataset}", num_train: 48, num_eval: 9, answer_format: plain}}}}
adapter: {{method: lora, params: {{r: 4}}}}
training: {{max_steps: {steps}, per_device_train_batch_size: 4, learning_rate: 0.005, save_steps: 4, logging_steps: 2,
           eval_limit: 3, lr_scheduler_type: constant}}
"""
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _train(recipe: Path, out: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "adaptune", "train", str(recipe), f"output.dir={out}", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if wait:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    return proc


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(vqa_dataset_dir, tmp_path):
    recipe = _recipe_file(tmp_path, vqa_dataset_dir, steps=24)
    _train(recipe, tmp_path / "straight")

    victim = _train(recipe, tmp_path / "killed", wait=False)
    deadline = time.time() + 300
    first = tmp_path / "killed" / "checkpoints" / "checkpoint-4" / "COMPLETE"
    while not first.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere after the first checkpoint
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "DONE").exists()
    refused = subprocess.run([sys.executable, "-m", "adaptune", "train", str(recipe),
                              f"output.dir={tmp_path / 'killed'}"], capture_output=True, text=True)
    assert refused.returncode == 2 and "interrupted run" in refused.stderr

    _train(recipe, tmp_path / "killed", "resume=true")
    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    state = json.loads((tmp_path / "killed" / "checkpoints" / "checkpoint-24" / "trainer_state.json").read_text())
    assert state["global_step"] == 24


@pytest.mark.slow
def test_kill_9_during_grpo_then_resume(tmp_path):
    """GRPO (tiny model, env + rewards + rule judge) killed after its first checkpoint resumes to the end."""
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "qwen3_vl" / "glyphqa" / "visionthink_grpo_tiny.yaml"
    out = tmp_path / "grpo"
    args = [f"output.dir={out}", "training.max_steps=6", "grpo.eval.enabled=false"]
    victim = subprocess.Popen([sys.executable, "-m", "adaptune", "train", str(recipe), *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "checkpoint-1" / "COMPLETE"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert first.exists(), "no checkpoint before the deadline"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (out / "DONE").exists()
    done = subprocess.run([sys.executable, "-m", "adaptune", "train", str(recipe), *args, "resume=true"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and (out / "DONE").exists()
    base, _ = build_tiny("qwen3_vl", seed=0)
    assert load_adapter(base, out / "adapter") is not None
