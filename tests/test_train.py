"""End-to-end adapter training through a recipe: run directory, frozen base, adapter reload, refusals, resume."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from adaptune.config import load_recipe
from adaptune.models import build_tiny, get_family
from adaptune.models.inputs import example_batch
from adaptune.train import run_recipe
from adaptune.train.rundir import RunDirError, latest_checkpoint


def recipe_for(dataset, out, **training):
    return load_recipe(data={
        "name": "t", "model": {"source": "tiny:qwen3_vl"},
        "task": {"name": "vqa_sft", "params": {"dataset": str(dataset), "num_train": 48, "num_eval": 9,
                                               "answer_format": "plain", "max_new_tokens": 4}},
        "adapter": {"method": "lora", "params": {"r": 4}},
        "training": {"max_steps": 6, "per_device_train_batch_size": 8, "learning_rate": 5e-3, "save_steps": 3,
                     "logging_steps": 2, **training},
        "output": {"dir": str(out)},
    })


def test_lora_recipe_end_to_end(vqa_dataset_dir, tmp_path):
    run_dir = run_recipe(recipe_for(vqa_dataset_dir, tmp_path / "run"))
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "report.md", "DONE", "adapter/adapter_config.json"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "eval.json").read_text())
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert "eval/accuracy" in summary and summary["eval/visual_tokens"] == 4.0
    assert latest_checkpoint(run_dir).name == "checkpoint-6"
    assert any(p.suffix == ".png" for p in (run_dir / "plots").iterdir())

    # the adapter changed the model; the base weights are the seeded ones
    base, processor = build_tiny("qwen3_vl", seed=0)
    spec = get_family("qwen3_vl")
    batch = example_batch(spec, processor)
    fresh, _ = build_tiny("qwen3_vl", seed=0)
    with torch.no_grad():
        base_logits = fresh(**batch).logits
        adapted = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
        adapted_logits = adapted(**batch).logits
        assert not torch.allclose(adapted_logits, base_logits)
        with adapted.disable_adapter():
            torch.testing.assert_close(adapted(**batch).logits, base_logits, rtol=0, atol=0)


def test_finished_run_is_not_clobbered(vqa_dataset_dir, tmp_path):
    run_recipe(recipe_for(vqa_dataset_dir, tmp_path / "run", max_steps=2))
    with pytest.raises(RunDirError, match="finished run.*overwrite"):
        run_recipe(recipe_for(vqa_dataset_dir, tmp_path / "run", max_steps=2))
    recipe = recipe_for(vqa_dataset_dir, tmp_path / "run", max_steps=2)
    recipe.output.overwrite = True
    assert (run_recipe(recipe) / "DONE").exists()


def test_resume_continues_from_last_complete_checkpoint(vqa_dataset_dir, tmp_path):
    run_dir = run_recipe(recipe_for(vqa_dataset_dir, tmp_path / "run", max_steps=3))
    # a half-written newer checkpoint (no COMPLETE marker) must be ignored
    (run_dir / "checkpoints" / "checkpoint-9").mkdir()
    recipe = recipe_for(vqa_dataset_dir, tmp_path / "run", max_steps=6)
    recipe.resume = True
    run_recipe(recipe)
    state = json.loads((run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    logged_steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                    if json.loads(line)["event"] == "train" and "loss" in json.loads(line)]
    assert 2 in logged_steps and 4 in logged_steps  # steps 1-3 were not redone from scratch... and 4-6 ran
    assert logged_steps.count(2) == 1


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_quantized_base_trains_lora_that_loads_on_full_precision(vqa_dataset_dir, tmp_path, mode):
    model, processor = build_tiny("qwen3_vl", seed=0)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    recipe = recipe_for(vqa_dataset_dir, tmp_path / "run", max_steps=3)
    recipe.model.source = str(tmp_path / "base")
    recipe.model.quantization = mode
    run_dir = run_recipe(recipe)

    from adaptune.models import load_model

    quantized = load_model(tmp_path / "base", quantization=mode).model
    kinds = {type(m).__name__ for n, m in quantized.named_modules() if n.startswith("model.language_model")}
    assert kinds & {"Linear4bit", "Linear8bitLt"}
    assert not any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for n, m in quantized.named_modules()
                   if n.startswith("model.visual")), "vision tower must stay in full precision"
    full, _ = build_tiny("qwen3_vl", seed=0)
    adapted = PeftModel.from_pretrained(full, run_dir / "adapter").eval()
    batch = example_batch(get_family("qwen3_vl"), processor)
    with torch.no_grad():
        assert torch.isfinite(adapted(**batch).logits).all()


def test_run_looks_like_an_hf_run(vqa_dataset_dir, tmp_path):
    """`report_to: tensorboard` writes event files inside the run; trainer_state.json sits at the run's top level
    with the same log history as the last checkpoint's."""
    pytest.importorskip("tensorboard")
    run_dir = run_recipe(recipe_for(vqa_dataset_dir, tmp_path / "run", max_steps=2, save_steps=2, logging_steps=1,
                                    report_to="tensorboard"))
    events = list(run_dir.rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/loss" in tags
    top = json.loads((run_dir / "trainer_state.json").read_text())
    last = json.loads((run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert top["global_step"] == 2 and top["log_history"][:2] == last["log_history"][:2]


def test_report_to_none_writes_no_events_and_a_missing_tracker_is_named(vqa_dataset_dir, tmp_path, monkeypatch):
    run_dir = run_recipe(recipe_for(vqa_dataset_dir, tmp_path / "run", max_steps=1, save_steps=1))
    assert not list(run_dir.rglob("events.out.tfevents.*")) and (run_dir / "trainer_state.json").is_file()
    import transformers.integrations

    from adaptune.config import RecipeError

    monkeypatch.setattr(transformers.integrations, "is_tensorboard_available", lambda: False)
    with pytest.raises(RecipeError, match=r"training.report_to: tensorboard is not installed.*adaptune\[tensorboard\]"):
        run_recipe(recipe_for(vqa_dataset_dir, tmp_path / "run2", max_steps=1, report_to=["tensorboard"]))


def test_device_is_left_to_accelerate_and_bf16_is_never_dropped(tmp_path, monkeypatch, caplog):
    """No forced `use_cpu` where torch sees an accelerator (MPS, XPU, ... not only CUDA); `bf16` is refused where the
    device cannot run it and runs as CPU autocast (with a warning) where there is no accelerator at all."""
    from adaptune.config import RecipeError
    from adaptune.train import convert

    recipe = load_recipe(data={"name": "x", "task": {"name": "vqa_sft"}, "training": {"bf16": True}})
    monkeypatch.setattr(convert, "has_accelerator", lambda: True)  # e.g. Apple MPS on a machine without CUDA
    monkeypatch.setattr(convert, "bf16_supported", lambda use_cpu=False: False)
    with pytest.raises(RecipeError, match="training.bf16: .*cannot train in bf16"):
        convert.training_arguments_kwargs(recipe.training, tmp_path)
    monkeypatch.setattr(convert, "bf16_supported", lambda use_cpu=False: True)
    kwargs = convert.training_arguments_kwargs(recipe.training, tmp_path)
    assert kwargs["bf16"] is True and kwargs["use_cpu"] is False
    monkeypatch.undo()
    monkeypatch.setattr(convert, "has_accelerator", lambda: False)
    with caplog.at_level("WARNING", logger="adaptune"):
        args = convert.to_training_arguments(recipe, tmp_path)
    assert args.use_cpu and args.bf16 and "bf16 autocast on the CPU" in caplog.text
