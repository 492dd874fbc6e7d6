"""Issue 14, "nothing lost, nothing silent": each test injects one fault and checks what adaptune does about it.

Run directories (markers, lock, overwrite, interrupted runs, metrics on resume), non-finite training and weights,
damaged adapter folders, eval without an adapter, CLI errors as one line, training values, the default build's stage
files and the register-distillation cache. Tiny models, 1-3 steps.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from adaptune.adapters import AdapterLoadError, AdapterSaveError, load_adapter, save_adapter
from adaptune.config import RecipeError, load_recipe, recipe_to_yaml
from adaptune.models import build_tiny
from adaptune.train import run_recipe
from adaptune.train.rundir import LOCK, MARKER, RunDirError, prepare_run_dir, release_run_lock


def recipe_for(out, dataset="unused", **training):
    return load_recipe(data={
        "name": "h", "model": {"source": "tiny:qwen3_vl"},
        "task": {"name": "vqa_sft", "params": {"dataset": str(dataset), "num_train": 8, "num_eval": 3,
                                               "answer_format": "plain", "max_new_tokens": 2}},
        "adapter": {"method": "lora", "params": {"r": 2}},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 5e-3, "save_steps": 2,
                     "logging_steps": 1, "eval_limit": 3, **training},
        "output": {"dir": str(out)},
    })


def prepared(recipe):
    """prepare_run_dir, lock released again (as a finished or failed run leaves it)."""
    run_dir = prepare_run_dir(recipe)
    release_run_lock(run_dir)
    return run_dir


# ----------------------------------------------------------------------------------------------- run directories


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    (project / "config.yaml").write_text("my own config\n")
    recipe = recipe_for(project)
    recipe.output.overwrite = True
    with pytest.raises(RunDirError, match="not an adaptune run directory"):
        prepare_run_dir(recipe)
    recipe.output.overwrite = False  # nor is it written into
    with pytest.raises(RunDirError, match="not an adaptune run directory"):
        prepare_run_dir(recipe)
    assert (project / "notes.txt").read_text() == "mine"
    assert (project / "config.yaml").read_text() == "my own config\n"
    assert not (project / MARKER).exists()
    monkeypatch.chdir(project)  # output.dir=. and .. of a project
    for target in (".", ".."):
        recipe = recipe_for(target)
        recipe.output.overwrite = True
        with pytest.raises(RunDirError):
            prepare_run_dir(recipe)
    assert (project / "notes.txt").exists()


def test_overwrite_refuses_the_working_directory_even_when_marked(tmp_path, monkeypatch):
    run_dir = prepared(recipe_for(tmp_path / "run"))
    (run_dir / "metrics.jsonl").write_text("{}\n")
    monkeypatch.chdir(run_dir)
    recipe = recipe_for(".")
    recipe.output.overwrite = True
    with pytest.raises(RunDirError, match="working directory"):
        prepare_run_dir(recipe)
    assert (run_dir / "metrics.jsonl").exists()


def test_overwrite_empties_a_marked_run_and_keeps_lock(tmp_path):
    run_dir = prepared(recipe_for(tmp_path / "run"))
    (run_dir / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
    (run_dir / "DONE").write_text("x")
    recipe = recipe_for(tmp_path / "run")
    recipe.output.overwrite = True
    prepare_run_dir(recipe)
    try:
        assert sorted(p.name for p in run_dir.iterdir()) == sorted([MARKER, LOCK, "checkpoints"])
    finally:
        release_run_lock(run_dir)


def test_legacy_run_folder_without_marker_is_adopted(tmp_path):
    legacy = tmp_path / "old"
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.yaml").write_text("name: h\n")
    prepared(recipe_for(legacy))
    assert (legacy / MARKER).exists()


def test_training_extra_output_dir_is_refused():
    with pytest.raises(RecipeError, match="training.extra.output_dir: not allowed.*checkpoints"):
        recipe_for("x", extra={"output_dir": "/tmp/elsewhere"})
    with pytest.raises(RecipeError, match="logging_nan_inf_filter"):
        recipe_for("x", extra={"logging_nan_inf_filter": True})


def test_second_run_on_the_same_directory_is_refused(tmp_path):
    recipe = recipe_for(tmp_path / "run")
    run_dir = prepare_run_dir(recipe)
    try:
        with pytest.raises(RunDirError, match="in use by another adaptune run"):
            prepare_run_dir(recipe_for(tmp_path / "run"))
    finally:
        release_run_lock(run_dir)
    prepared(recipe_for(tmp_path / "run"))  # free again once released


def test_lock_of_another_live_process_refuses_and_of_a_dead_one_is_stale(tmp_path):
    run_dir = prepared(recipe_for(tmp_path / "run"))
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, socket, sys, time
fd = os.open({str(run_dir / LOCK)!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{{os.getpid()}} {{socket.gethostname()}}\\n".encode())
print("held", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"in use by another adaptune run \\(pid {holder.pid} "):
            prepare_run_dir(recipe_for(tmp_path / "run"))
    finally:
        holder.kill()  # kill -9: the lock file stays behind, the lock itself dies with the process
        holder.wait()
    assert (run_dir / LOCK).exists()
    prepared(recipe_for(tmp_path / "run"))


def test_pid_lock_fallback_refuses_a_live_pid_and_takes_over_a_dead_one(tmp_path):
    """Where flock is unavailable (some network filesystems) the pid in the lock file decides."""
    from adaptune.train.rundir import RunLock

    run_dir = prepared(recipe_for(tmp_path / "run"))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / LOCK).write_text(f"{live.pid} somehost\n")
        with pytest.raises(RunDirError, match=f"pid {live.pid} on somehost"):
            RunLock(run_dir)._acquire_by_pid()
    finally:
        live.kill()
        live.wait()
    (run_dir / LOCK).write_text(f"{live.pid} somehost\n")  # its process is gone: stale
    lock = RunLock(run_dir)
    lock._acquire_by_pid()
    assert (run_dir / LOCK).read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not (run_dir / LOCK).exists()


def test_run_killed_before_its_first_checkpoint_is_not_reused_silently(tmp_path):
    run_dir = prepared(recipe_for(tmp_path / "run"))
    (run_dir / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 3.0}\n')  # then kill -9
    (run_dir / "checkpoints" / "checkpoint-2").mkdir()  # half written: no COMPLETE
    with pytest.raises(RunDirError, match="no complete checkpoint.*overwrite"):
        prepare_run_dir(recipe_for(tmp_path / "run"))
    assert (run_dir / "metrics.jsonl").exists()
    recipe = recipe_for(tmp_path / "run")
    recipe.resume = True  # nothing to resume: starts over cleanly
    prepared(recipe)
    assert not (run_dir / "metrics.jsonl").exists()
    assert list((run_dir / "checkpoints").iterdir()) == []


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        prepare_run_dir(recipe_for(tmp_path / "file"))


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_drops_metrics_logged_after_the_checkpoint(vqa_dataset_dir, tmp_path):
    run_dir = run_recipe(recipe_for(tmp_path / "run", vqa_dataset_dir, max_steps=2))
    # a run killed at step 3, after logging, before its next checkpoint
    (run_dir / "DONE").unlink()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"event": "train", "step": 3, "loss": 9.0, "ghost": True}) + "\n")
        f.write('{"event": "train", "step": 4, "lo')  # torn last line
    recipe = recipe_for(tmp_path / "run", vqa_dataset_dir, max_steps=3)
    recipe.resume = True
    run_recipe(recipe)
    records = _records(run_dir)
    assert not any(r.get("ghost") for r in records)
    steps = [r["step"] for r in records if r["event"] == "train" and "loss" in r]
    assert steps == [1, 2, 3]


# ----------------------------------------------------------------------------------------------- non-finite


def test_nan_loss_stops_the_run_logged_as_nan_nothing_saved(vqa_dataset_dir, tmp_path, monkeypatch):
    from adaptune.train import objectives
    from adaptune.train.lifecycle import TrainingDivergedError

    real = objectives.training_loss
    calls = []

    def poisoned(model, task, inputs, objective):
        loss, logs = real(model, task, inputs, objective)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 2 else loss), logs

    monkeypatch.setattr(objectives, "training_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match="diverged at step 2"):
        run_recipe(recipe_for(tmp_path / "run", vqa_dataset_dir, max_steps=3, save_steps=1))
    run_dir = tmp_path / "run"
    assert not (run_dir / "DONE").exists() and not (run_dir / "adapter").exists()
    diverged = [r for r in _records(run_dir) if r["event"] == "diverged"]
    assert len(diverged) == 1 and diverged[0]["step"] == 2 and math.isnan(diverged[0]["loss"])
    assert not any(r.get("loss") == 0.0 for r in _records(run_dir))
    assert not (run_dir / "checkpoints" / "checkpoint-2").exists()  # the NaN step was never applied or saved
    assert not (run_dir / LOCK).exists()  # released: a rerun is refused as an attempt, not as a live lock
    with pytest.raises(RunDirError, match="interrupted run"):
        run_recipe(recipe_for(tmp_path / "run", vqa_dataset_dir, max_steps=3))


def lora_on_tiny():
    model, _ = build_tiny("qwen3_vl", seed=0)
    return get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


def test_non_finite_adapter_is_not_saved(tmp_path):
    model = lora_on_tiny()
    name, param = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        param[0, 0] = float("inf")
    with pytest.raises(AdapterSaveError, match="NaN or inf"):
        save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter")]


@pytest.fixture
def adapter_dir(tmp_path):
    path = save_adapter(lora_on_tiny(), tmp_path / "adapter")
    assert json.loads((path / "adaptune.json").read_text())["sha256"]["adapter_model.safetensors"]
    return path


def _rewrite(adapter_dir, change, keep_checksum=False):
    weights = adapter_dir / "adapter_model.safetensors"
    tensors = change(load_file(weights))
    save_file(tensors, weights, metadata={"format": "pt"})
    if not keep_checksum:  # as an adapter from before checksums, or one whose checksum was updated with the damage
        meta = json.loads((adapter_dir / "adaptune.json").read_text())
        meta.pop("sha256")
        (adapter_dir / "adaptune.json").write_text(json.dumps(meta))


def test_nan_weights_are_refused_at_load(adapter_dir):
    def nan(tensors):
        key = next(iter(tensors))
        tensors[key][0] = float("nan")
        return tensors

    _rewrite(adapter_dir, nan)
    with pytest.raises(AdapterLoadError, match="NaN or inf"):
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], adapter_dir)


def test_damaged_bytes_fail_the_checksum(adapter_dir):
    weights = adapter_dir / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\xff\xff\xff\x7f"  # a NaN in the last float, header intact
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterLoadError, match="does not match the sha256"):
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], adapter_dir)


def test_weights_whose_keys_match_nothing_are_refused(adapter_dir):
    _rewrite(adapter_dir, lambda t: {k.replace("q_proj", "qq_proj").replace("v_proj", "vv_proj"): v
                                     for k, v in t.items()})
    with pytest.raises(AdapterLoadError, match="none of its .* tensors matches"):
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], adapter_dir)


@pytest.mark.parametrize("file, change, message", [
    ("adapter_config.json", lambda c: [c], "must be a JSON object, got list"),
    ("adapter_config.json", lambda c: {**c, "peft_type": "NOPE"}, "field peft_type: unknown adapter type 'NOPE'"),
    ("adapter_config.json", lambda c: {k: v for k, v in c.items() if k != "peft_type"}, "field peft_type: missing"),
    ("adapter_config.json", lambda c: {k: v for k, v in c.items() if k != "target_modules"},
     "field target_modules: missing"),
    ("adapter_config.json", lambda c: {**c, "target_modules": 5}, "field target_modules: must be a string"),
    ("adapter_config.json", lambda c: {**c, "target_modules": None}, "does not fit this model"),
    ("adapter_config.json", lambda c: {**c, "r": "eight"}, "field r: must be a positive number"),
    ("adaptune.json", lambda m: [m], "must be a JSON object, got list"),
    ("adaptune.json", lambda m: {**m, "base": "qwen"}, "field base: wrong type"),
    ("adaptune.json", lambda m: {**m, "adaptune_version": 1}, "field adaptune_version: wrong type"),
    ("adaptune.json", lambda m: {**m, "sha256": {"adapter_model.safetensors": 5}}, "field sha256.adapter_model"),
])
def test_corrupt_config_variants_name_file_and_field(adapter_dir, file, change, message):
    path = adapter_dir / file
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(AdapterLoadError, match=message) as info:
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], adapter_dir)
    assert file in str(info.value)


# ----------------------------------------------------------------------------------------------- eval, CLI


def test_eval_on_a_run_without_adapter_is_an_error(tmp_path, capsys):
    from adaptune.cli import main
    from adaptune.eval import evaluate_run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(recipe_to_yaml(recipe_for(run_dir)))
    with pytest.raises(AdapterLoadError, match="has no adapter/ .*did not finish.*'lora'"):
        evaluate_run(run_dir)
    assert main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adaptune eval: error:") and "no adapter/" in err and len(err.splitlines()) == 1
    assert not (run_dir / "eval.json").exists()


def _error_classes():
    from adaptune.budget.grid import BudgetError
    from adaptune.data.validate import InputError
    from adaptune.models import ModelLoadError
    from adaptune.train.lifecycle import TrainingDivergedError

    return [RecipeError("bad recipe"), AdapterLoadError("bad adapter"), AdapterSaveError("nan adapter"),
            InputError("row 3: bad image"), BudgetError("bad budget"), RunDirError("in use"),
            ModelLoadError("no model"), TrainingDivergedError("diverged"),
            PermissionError(errno.EACCES, "Permission denied", "/ro/run"),
            OSError(errno.ENOSPC, "No space left on device")]


@pytest.mark.parametrize("index", range(10))
def test_cli_turns_errors_into_one_line_exit_2(monkeypatch, capsys, index):
    from adaptune import cli

    exc = _error_classes()[index]

    def boom(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_info", boom)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("adaptune info: error:")
    assert "Traceback" not in err
    with pytest.raises(type(exc)):
        cli.main(["--debug", "info"])
    monkeypatch.setenv("ADAPTUNE_DEBUG", "1")
    with pytest.raises(type(exc)):
        cli.main(["info"])


def test_cli_train_into_a_file_or_an_unwritable_folder(tmp_path, capsys, monkeypatch):
    from adaptune.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_to_yaml(recipe_for("unused")))
    (tmp_path / "file").write_text("x")
    assert main(["train", str(recipe), f"output.dir={tmp_path / 'file'}"]) == 2
    assert "is a file" in capsys.readouterr().err

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("adaptune.train.rundir._write_marker", full)  # disk full while creating the run
    assert main(["train", str(recipe), f"output.dir={tmp_path / 'new'}"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- training values


@pytest.mark.parametrize("key, value, message", [
    ("max_steps", -5, "max_steps: must be an integer >= 0"),
    ("per_device_train_batch_size", 0, "per_device_train_batch_size: must be an integer >= 1"),
    ("gradient_accumulation_steps", 0, "gradient_accumulation_steps: must be an integer >= 1"),
    ("learning_rate", float("nan"), "learning_rate: must be a finite number > 0"),
    ("learning_rate", 0.0, "learning_rate: must be a finite number > 0"),
    ("learning_rate", float("inf"), "learning_rate: must be a finite number > 0"),
    ("logging_steps", 0, "logging_steps"),
    ("save_steps", 0, "save_steps"),
    ("warmup_steps", -1.0, "warmup_steps"),
    ("max_grad_norm", float("nan"), "max_grad_norm"),
    ("eval_limit", 0, "eval_limit"),
    ("lr_scheduler_type", "cosine_nope", "unknown scheduler"),
    ("report_to", 3, "report_to"),
])
def test_training_values_are_checked_before_the_run_folder(tmp_path, key, value, message):
    with pytest.raises(RecipeError, match=f"training.{message}" if not message.startswith("unknown") else message):
        recipe_for(tmp_path / "run", **{key: value})
    recipe = recipe_for(tmp_path / "run")
    setattr(recipe.training, key, value)  # edited in code after loading
    with pytest.raises(RecipeError):
        run_recipe(recipe)
    assert not (tmp_path / "run").exists()


def test_max_steps_zero_means_evaluate_only(tmp_path):
    assert recipe_for(tmp_path / "run", max_steps=0).training.max_steps == 0


# ----------------------------------------------------------------------------------------------- pickles


class _Payload:
    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_default_build_stage_files_are_safetensors_and_partial_ones_are_skipped(tmp_path):
    from adaptune.default.build import latest_stage, save_stage

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(5, 3)
            self.head = torch.nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    save_stage(tmp_path, 1, model, {"stages": {"stage1": {"loss": torch.tensor(0.5)}}, "curves": [1, 2]})
    assert (tmp_path / "stage1.safetensors").exists() and not list(tmp_path.glob(".stage*"))
    (tmp_path / "stage2.safetensors").write_bytes(b"")  # killed by the old plain save: 0 bytes
    (tmp_path / ".stage3.safetensors.tmp-123").write_bytes(b"half")  # killed by the new one: a temp file
    flag = tmp_path / "pwned"
    torch.save({"model": _Payload(flag)}, tmp_path / "stage4.pt")  # a planted pickle
    (tmp_path / "stage3.pt").write_bytes(b"")  # an older build's pickle, killed mid-save
    stage, weights, state = latest_stage(tmp_path)
    assert stage == 1 and state == {"stages": {"stage1": {"loss": 0.5}}, "curves": [1, 2]}
    torch.testing.assert_close(weights["head.weight"], model.embed.weight.detach())
    assert not flag.exists()
    # an older build's intact stage file (tensors and plain containers) still resumes, read with weights_only=True
    torch.save({"model": {"w": torch.ones(2)}, "state": {"stages": {}, "curves": [0.5]}}, tmp_path / "stage4.pt")
    stage, weights, state = latest_stage(tmp_path)
    assert stage == 4 and torch.equal(weights["w"], torch.ones(2)) and state["curves"] == [0.5]


def test_distillation_cache_does_not_unpickle_code(tmp_path):
    from adaptune.methods.registers.distill import TargetCache

    cache = TargetCache(tmp_path / "cache", namespace="t")
    pixels = torch.zeros(1, 3, 4, 4)
    flag = tmp_path / "pwned"
    torch.save(_Payload(flag), cache.directory / f"{cache.key(pixels[0], [], 0.0)}.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        cache.targets(None, "qwen3_vl", pixels, [], 0.0)
    assert not flag.exists()
