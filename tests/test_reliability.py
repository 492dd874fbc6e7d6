"""Faults injected on purpose: wrong or damaged adapters, interrupted saves, kill -9 during training."""

from __future__ import annotations

import json
import os
import re
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
                                               r"model has 96") as info:
        load_adapter(other, adapter_dir)
    # the message names the family the adapter was trained on, then every differing field, "; "-separated
    head, _, diffs = str(info.value).partition(" was trained on another base model (qwen3_vl); ")
    assert head == f"adapter {adapter_dir}" and len(diffs.split("; ")) >= 2
    assert all(re.fullmatch(r"[a-z_.]+: adapter expects \d+, model has \d+", d) for d in diffs.split("; "))
    assert "text_config.hidden_size: adapter expects 64, model has 96" in diffs.split("; ")
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


# ----------------------------------------------------------------------------------------------- adapter checks, units


def test_base_fingerprint_keeps_the_scalar_sizes_of_each_section():
    from types import SimpleNamespace

    from adaptune.adapters import base_fingerprint

    data = {"model_type": "m", "hidden_size": 8, "image_size": [224, 224], "name_or_path": "x",
            "vision_config": {"patch_size": 14, "image_size": 224, "depth": 2, "out_hidden_size": {"a": 1}},
            "text_config": {"hidden_size": 16, "vocab_size": 99, "rope_scaling": {"hidden_size": 3}},
            "layer_types": ["full"]}
    model = SimpleNamespace(config=SimpleNamespace(to_dict=lambda: data))
    assert base_fingerprint(model) == {"model_type": "m", "hidden_size": 8, "vision_config.patch_size": 14,
                                       "vision_config.image_size": 224, "text_config.hidden_size": 16,
                                       "text_config.vocab_size": 99}
    assert base_fingerprint(torch.nn.Linear(2, 2)) == {}  # no config: nothing to compare
    qwen = base_fingerprint(build_tiny("qwen3_vl", seed=0)[0])
    assert qwen["model_type"] == "qwen3_vl" and qwen["text_config.hidden_size"] == 64


def test_version_tuple_reads_up_to_three_numbers():
    from adaptune.adapters import _version_tuple

    assert _version_tuple("1.12.3") == (1, 12, 3)
    assert _version_tuple("0.2.0.dev4") == (0, 2, 0)
    assert _version_tuple("2") == (2,)
    assert _version_tuple("1.x.7") == (1, 0, 7)
    assert _version_tuple("0.4rc1") == (0, 4) and _version_tuple("1.0a2.post3") == (1, 0, 0)  # not 41, not 2
    assert _version_tuple("None") == (0,) == _version_tuple("")


@pytest.mark.parametrize("saved, loads", [("0.1.99", True), ("0.0.5", True), ("0.1", True), ("0.2.0", False),
                                          ("1.0.0", False), (None, True)])
def test_only_a_newer_major_or_minor_version_is_refused(adapter_dir, saved, loads):
    from adaptune.version import __version__

    assert __version__.startswith("0.1.")  # the cases above are written against 0.1.x
    meta = json.loads((adapter_dir / "adaptune.json").read_text())
    if saved is None:
        del meta["adaptune_version"]
    else:
        meta["adaptune_version"] = saved
    (adapter_dir / "adaptune.json").write_text(json.dumps(meta))
    base, _ = build_tiny("qwen3_vl", seed=0)
    if loads:
        assert load_adapter(base, adapter_dir) is not None
    else:
        with pytest.raises(AdapterLoadError, match=f"written by adaptune {saved}, newer"):
            load_adapter(base, adapter_dir)


def test_non_finite_is_checked_per_floating_tensor():
    from adaptune.adapters import _non_finite

    tensors = {"ok": torch.ones(3), "ints": torch.tensor([1, 2]), "one_inf": torch.tensor([1.0, float("inf")]),
               "nan": torch.tensor([float("nan")])}
    assert _non_finite(tensors) == ["one_inf", "nan"]


@pytest.mark.parametrize("file, text, message", [
    ("adapter_config.json", "{", r"adapter_config\.json is not valid JSON \("),
    ("adaptune.json", "{", r"adaptune\.json is not valid JSON \("),
])
def test_unreadable_json_names_the_file(adapter_dir, file, text, message):
    (adapter_dir / file).write_text(text)
    with pytest.raises(AdapterLoadError, match=message):
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], adapter_dir)


def test_pickle_weights_and_an_empty_weights_file_are_refused(adapter_dir):
    from safetensors.torch import save_file

    base, _ = build_tiny("qwen3_vl", seed=0)
    weights = adapter_dir / "adapter_model.safetensors"
    save_file({}, weights)
    with pytest.raises(AdapterLoadError, match=r"adapter_model\.safetensors holds no tensors"):
        load_adapter(base, adapter_dir)
    weights.rename(adapter_dir / "adapter_model.bin")
    with pytest.raises(AdapterLoadError, match=r"holds pickle weights \(adapter_model\.bin\); adaptune loads "
                                               r"safetensors only"):
        load_adapter(base, adapter_dir)


@pytest.mark.parametrize("key, value, type_name", [("family", 5, "int"), ("source", ["x"], "list"),
                                                   ("sha256", "abc", "str"), ("base", None, "NoneType")])
def test_each_metadata_field_is_type_checked(adapter_dir, key, value, type_name):
    meta = json.loads((adapter_dir / "adaptune.json").read_text())
    meta[key] = value
    (adapter_dir / "adaptune.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=rf"adaptune\.json: field {key}: wrong type \({type_name}\)"):
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], adapter_dir)


def _rename_keys(path: Path, rename) -> list[str]:
    from safetensors.torch import save_file

    tensors = load_file(path / "adapter_model.safetensors")
    renamed = {rename(k): v for k, v in tensors.items()}
    save_file(renamed, path / "adapter_model.safetensors", metadata={"format": "pt"})
    meta = json.loads((path / "adaptune.json").read_text())
    meta.pop("sha256", None)  # as an adapter from before checksums
    (path / "adaptune.json").write_text(json.dumps(meta))
    return sorted(set(renamed) - set(tensors))


def test_keys_check_asks_no_hub_restores_the_base_name_and_names_the_first_stray_key(tmp_path, monkeypatch):
    """The landed-keys check clears the adapter's base name while PEFT enumerates its keys (else PEFT would look the
    name up on the Hub to compare vocabulary sizes, and a failed lookup would skip the check), then puts it back."""
    import peft.utils.save_and_load as peft_save_and_load

    def no_hub(*args, **kwargs):
        raise AssertionError("looked the base up on the Hub")

    monkeypatch.setattr(peft_save_and_load, "check_file_exists_on_hf_hub", no_hub)
    hub_id = "adaptune-test/tiny-qwen3-vl"
    path = save_adapter(lora_on("qwen3_vl"), tmp_path / "adapter", source=hub_id)
    loaded = load_adapter(build_tiny("qwen3_vl", seed=0)[0], path)
    assert loaded.peft_config["default"].base_model_name_or_path == hub_id
    stray = _rename_keys(path, lambda k: k.replace("layers.0.self_attn.q_proj", "layers.0.self_attn.qq_proj"))
    assert len(stray) == 2  # lora_A and lora_B of one module; the others still match
    with pytest.raises(AdapterLoadError, match=rf"2 of its \d+ tensors match no module of this adapter "
                                               rf"\(first: {re.escape(stray[0])}\)"):
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], path)
    every = _rename_keys(path, lambda k: k.replace("v_proj", "vv_proj").replace("q_proj", "xq_proj"))
    with pytest.raises(AdapterLoadError, match=rf"none of its {len(every)} tensors matches this adapter's modules "
                                               rf"\(first: {re.escape(every[0])}\)"):
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], path)


def test_save_writes_the_given_state_dict_and_metadata_of_a_model_of_no_known_family(tmp_path):
    """`state_dict` (the weights gathered across processes) is what lands in the file, not the module's own; a base
    adaptune has no family for is still saved, its family recorded as None, its fingerprint and checksum as always."""
    import hashlib

    from transformers import LlamaConfig, LlamaForCausalLM

    from adaptune.version import __version__

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    gathered = {k: torch.full_like(v, 0.5) if "lora_B" in k else v for k, v in model.state_dict().items()}
    path = save_adapter(model, tmp_path / "adapter", state_dict=gathered)
    saved = load_file(path / "adapter_model.safetensors")
    assert len(saved) == 4 and all(bool((v == 0.5).all()) for k, v in saved.items() if "lora_B" in k)
    meta = json.loads((path / "adaptune.json").read_text())
    assert meta["family"] is None and meta["adaptune_version"] == __version__ and meta["source"] is None
    assert meta["base"] == {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "vocab_size": 32,
                            "intermediate_size": 32, "num_attention_heads": 2}
    digest = hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert meta["sha256"] == {"adapter_model.safetensors": digest}
    assert (path / "README.md").exists()
    own = save_adapter(model, tmp_path / "own")  # no state_dict: the module's weights (LoRA B starts at zero)
    assert all(bool((v == 0).all()) for k, v in load_file(own / "adapter_model.safetensors").items() if "lora_B" in k)


@pytest.mark.parametrize("change, message", [
    ({"peft_type": 5}, r"field peft_type: missing or not a string \(5\)"),
    ({"target_modules": ["q_proj", 5]}, r"field target_modules: must be a string or a list of strings, got "
                                        r"\['q_proj', 5\]"),
    ({"r": True}, "field r: must be a positive number, got True"),
    ({"r": 0}, "field r: must be a positive number, got 0"),
    ({"r": -2}, "field r: must be a positive number, got -2"),
    ({"r": float("inf")}, "field r: must be a positive number, got inf"),
    ({"r": float("nan")}, "field r: must be a positive number, got nan"),
    ({"lora_alpha": 0.0}, "field lora_alpha: must be a positive number, got 0.0"),
    ({"lora_alpha": "8"}, "field lora_alpha: must be a positive number, got '8'"),
])
def test_adapter_config_values_are_checked_by_field(adapter_dir, change, message):
    config_file = adapter_dir / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    with pytest.raises(AdapterLoadError, match=rf"adapter_config\.json: {message}"):
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], adapter_dir)


@pytest.mark.parametrize("r, alpha", [(1, 1), (1, 0.5), (2, 1e-3)])
def test_small_positive_rank_and_alpha_pass_the_config_check(adapter_dir, r, alpha):
    """The bound is "positive": rank 1 and a fractional lora_alpha are valid LoRA settings."""
    from adaptune.adapters import _check_adapter_config

    config_file = adapter_dir / "adapter_config.json"
    _check_adapter_config({**json.loads(config_file.read_text()), "r": r, "lora_alpha": alpha}, config_file)


def test_adapter_config_accepts_a_regex_string_and_float_sizes(tmp_path):
    model = lora_on("qwen3_vl")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(generator=torch.Generator().manual_seed(2))
    path = save_adapter(model, tmp_path / "adapter")
    config_file = path / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(target_modules=r".*\.(q_proj|v_proj)", lora_alpha=float(config["lora_alpha"]))
    config_file.write_text(json.dumps(config))
    ids = torch.tensor([[1, 2, 3, 4]])
    loaded = load_adapter(build_tiny("qwen3_vl", seed=0)[0], path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference unless asked
    trainable = load_adapter(build_tiny("qwen3_vl", seed=0)[0], path, is_trainable=True)
    names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


@pytest.mark.parametrize("error", [RuntimeError("size mismatch\nsecond line"), ValueError("bad value"),
                                   KeyError("k"), TypeError("t"), AttributeError("a"), RuntimeError("")])
def test_what_peft_cannot_load_becomes_one_line_naming_the_config(adapter_dir, monkeypatch, error):
    from peft import PeftModel

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(PeftModel, "from_pretrained", refuse)
    first = (str(error).splitlines() or [type(error).__name__])[0]
    with pytest.raises(AdapterLoadError, match=rf"^adapter {re.escape(str(adapter_dir))} does not fit this model "
                                               rf"\({re.escape(str(adapter_dir / 'adapter_config.json'))}\): "
                                               rf"{re.escape(first)}$"):
        load_adapter(build_tiny("qwen3_vl", seed=0)[0], adapter_dir)


@pytest.mark.parametrize("missing", [("base",), ("sha256",), ("base", "sha256", "family", "source")])
def test_metadata_of_an_older_adaptune_without_some_fields_still_loads(adapter_dir, missing):
    from peft import PeftModel

    meta = json.loads((adapter_dir / "adaptune.json").read_text())
    for key in missing:
        del meta[key]
    (adapter_dir / "adaptune.json").write_text(json.dumps(meta))
    assert isinstance(load_adapter(build_tiny("qwen3_vl", seed=0)[0], adapter_dir), PeftModel)


def test_save_records_the_family_of_the_base_under_the_peft_wrapper(tmp_path):
    """The family comes from the base model inside the PEFT wrapper (the wrapper itself has no family), and a save
    without a state_dict writes the module's own weights."""
    model, _ = build_tiny("qwen3_vl", seed=0)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    path = save_adapter(peft_model, tmp_path / "adapter", source="tiny:qwen3_vl")
    meta = json.loads((path / "adaptune.json").read_text())
    assert meta["family"] == "qwen3_vl" and meta["source"] == "tiny:qwen3_vl"
    assert meta["base"]["model_type"] == "qwen3_vl"
    own = {k: v for k, v in peft_model.state_dict().items() if "lora_A" in k}
    saved = load_file(path / "adapter_model.safetensors")
    assert len(saved) == 2 * len(own) and all(
        torch.equal(saved[k.replace(".default", "")], v) for k, v in own.items())
    card = (path / "README.md").read_text()
    assert "`tiny:qwen3_vl`, a model built by adaptune's loader" in card and "(family `qwen3_vl`)" in card
    assert "pipeline_tag: image-text-to-text" in card  # the family's kind (a VLM) picks the Hub's pipeline tag
    # the JSON files a person reads and diffs (on the Hub too): two-space indented; adapter_config.json key-sorted
    config_text, meta_text = (path / "adapter_config.json").read_text(), (path / "adaptune.json").read_text()
    assert config_text == json.dumps(json.loads(config_text), indent=2, sort_keys=True) + "\n"
    assert meta_text == json.dumps(meta, indent=2) + "\n"
