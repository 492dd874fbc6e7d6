"""GRPO recipes: recipe -> GRPOConfig (suppressed tokens, completion budget, errors), real GRPO steps on a tiny
Qwen3-VL through the tool path, the run directory, resume, and (slow) the same under `accelerate launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from adaptune.config import RecipeError, load_recipe
from adaptune.models import build_tiny, load_model
from adaptune.rl.env import TOOL_RESULT_TEXT
from adaptune.rl.completion_budget import completion_budget, resolve_completion_length, tool_suffix_tokens
from adaptune.rl.run import run_grpo_recipe
from adaptune.rl.sections import parse_grpo_section
from adaptune.rl.trainer import grpo_config_kwargs
from adaptune.budget.protocol import tool_call_text
from adaptune.budget.two_turn import vision_token_ids
from adaptune.train.rundir import latest_checkpoint
from adaptune.train.convert import has_accelerator

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml"
DEMO = ROOT / "recipes/qwen3_vl/glyphqa/visionthink_grpo.yaml"


def protocol_turns(processor, answer: str = "3") -> dict[str, list[int]]:
    """Token ids of the protocol's pieces on a Qwen-style template: the assistant header, the header after a tool
    reply, a tool-call turn, an untagged ("bad") answer, a tagged final answer, and "<think>"."""
    tok = processor.tokenizer

    def enc(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    return {"header": enc("<|im_start|>assistant\n"),
            "after_tool": enc("</tool_response><|im_end|>\n<|im_start|>assistant\n"),
            "tool": enc("<think>x</think>\n" + tool_call_text()) + [im_end],
            "bad": enc("<think>y</think>" + answer) + [im_end],
            "final": enc(f"<think>z</think><answer>{answer}</answer>") + [im_end],
            "think": enc("<think>")}


def scripted_generation_kwargs(processor, answer: str = "3", big: float = 40.0, choice: float = 30.0):
    """Sequence biases that make a RANDOM-weight model follow the protocol: every first turn starts with <think>,
    then either calls the tool (well-formed) or answers without tags (format 0); after the tool turn it answers in
    tags. Rollouts of one prompt then differ in reward, so GRPO has a gradient. Returns (kwargs, longest turn)."""
    t = protocol_turns(processor, answer)
    header, after_tool, tool, bad, final = t["header"], t["after_tool"], t["tool"], t["bad"], t["final"]
    bias = [[header + t["think"], big], [header + tool[:2], choice], [header + bad[:2], choice],
            [after_tool + final[:2], 3 * big]]
    for seq in (tool, bad, final):
        bias += [[seq[: k + 1], big] for k in range(2, len(seq))]
    return {"sequence_bias": bias}, max(len(tool), len(bad), len(final))


def tiny_recipe(out: Path, *overrides: str, scripted: bool = True):
    recipe = load_recipe(TINY, [f"output.dir={out}", *overrides])
    if scripted:
        kwargs, longest = scripted_generation_kwargs(build_tiny("qwen3_vl")[1])
        recipe.grpo["trainer"]["generation_kwargs"] = kwargs
        recipe.grpo["env"]["turn_tokens"] = longest
    return recipe


@pytest.fixture
def one_thread():
    """GRPO on a tiny model is latency-bound: one intra-op thread avoids oversubscribing a shared 2-core CPU
    (measured 3-6x faster than two threads while another job trains)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny:qwen3_vl")


# ------------------------------------------------------------------------------------------------ conversion


@pytest.mark.parametrize(("section", "key"), [
    ({"bogus": 1}, "grpo.bogus"),
    ({"trainer": {"num_generation": 4}}, "grpo.trainer.num_generation"),
    ({"trainer": {"per_device_train_batch_size": 4}}, "grpo.trainer.per_device_train_batch_size"),  # training's
    ({"reward": {"judges": "rule"}}, "grpo.reward.judges"),
    ({"env": {"turn_token": 3}}, "grpo.env.turn_token"),
    ({"data": {"fine": 0.3}}, "grpo.data.fine"),
    ({"eval": {"methods": ["policy", "magic"]}}, "grpo.eval.methods"),
])
def test_unknown_grpo_keys_name_the_key_and_the_file(section, key):
    recipe = load_recipe(TINY)
    recipe.grpo = section
    with pytest.raises(RecipeError, match=rf"visionthink_grpo_tiny.yaml: {key.replace('.', '[.]')}"):
        parse_grpo_section(recipe)


def test_more_than_one_tool_round_is_refused():
    recipe = load_recipe(TINY, ["grpo.trainer.max_tool_calling_iterations=2"])
    with pytest.raises(RecipeError, match="max_tool_calling_iterations=2"):
        parse_grpo_section(recipe)


def test_grpo_config_conversion(loaded, tmp_path):
    from trl import GRPOConfig

    recipe = load_recipe(TINY, ["grpo.trainer.generation_kwargs={suppress_tokens: [7]}",
                                "training.report_to=[tensorboard]", "training.warmup_steps=0.5"])
    plan = parse_grpo_section(recipe)
    budget = completion_budget(loaded.processor, loaded.family, [(128, 128)], plan.env.turn_tokens)
    config = GRPOConfig(**grpo_config_kwargs(recipe, plan, loaded, tmp_path, budget))
    assert config.report_to == ["tensorboard"] and config.warmup_steps == 0.5  # training: names, both paths
    assert config.use_cpu == (not has_accelerator()) and not config.bf16  # CPU only where there is no accelerator
    assert config.max_tool_calling_iterations == 1
    assert config.num_generations == 2 and config.generation_batch_size % config.num_generations == 0
    assert config.max_completion_length == budget["required"] == 2 * 12 + budget["tool_turn_tokens"]
    assert budget["image_tokens"] == 16 and budget["tool_turn_tokens"] > 16
    tok = loaded.processor.tokenizer
    vision = {tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                      "<|vision_end|>")}
    suppressed = set(config.generation_kwargs["suppress_tokens"])
    assert vision <= suppressed and 7 in suppressed  # the user's list is kept, the vision tokens are added
    assert config.learning_rate == recipe.training.learning_rate and config.max_steps == 2


def test_vllm_generation_bans_vision_tokens_with_logit_bias(loaded, tmp_path):
    from adaptune.rl.trainer import suppress_vision_kwargs

    kwargs = suppress_vision_kwargs(loaded.processor, {"logit_bias": {"11": 1.0}}, use_vllm=True)
    assert kwargs["logit_bias"][11] == 1.0
    assert all(kwargs["logit_bias"][i] == -100.0 for i in vision_token_ids(loaded.processor))
    assert "suppress_tokens" not in kwargs


def test_completion_length_too_small_is_a_clear_error(loaded, tmp_path):
    budget = completion_budget(loaded.processor, loaded.family, [(128, 128)], 12)
    with pytest.raises(RecipeError, match=r"max_completion_length=40 is too small.*16 of them image tokens"):
        resolve_completion_length(40, budget, "r.yaml: grpo")
    assert resolve_completion_length(budget["required"] + 5, budget, "g") == budget["required"] + 5
    recipe = load_recipe(TINY, ["grpo.trainer.max_completion_length=30"])
    with pytest.raises(RecipeError, match="too small"):
        grpo_config_kwargs(recipe, parse_grpo_section(recipe), loaded, tmp_path, budget)


def test_generation_batch_must_hold_whole_groups(loaded, tmp_path):
    recipe = load_recipe(TINY, ["grpo.trainer.num_generations=3"])
    budget = completion_budget(loaded.processor, loaded.family, [(128, 128)], 12)
    with pytest.raises(RecipeError, match="multiple of grpo.trainer.num_generations=3"):
        grpo_config_kwargs(recipe, parse_grpo_section(recipe), loaded, tmp_path, budget)


def test_tool_turn_budget_matches_trl(loaded):
    """Our count of the tool turn equals the ids TRL appends (its own `_get_tool_suffix_ids`, image expanded)."""
    from trl import GRPOTrainer

    processor = loaded.processor
    fake = SimpleNamespace(processing_class=processor, _is_vlm=True, chat_template=None, chat_template_kwargs={},
                           _tokenizer=processor.tokenizer)
    full = Image.new("RGB", (128, 128))
    message = {"role": "tool", "name": "resize_image",
               "content": [{"type": "image", "image": full}, {"type": "text", "text": TOOL_RESULT_TEXT}]}
    trl_ids = GRPOTrainer._get_tool_suffix_ids(fake, [message])
    assert len(trl_ids) == tool_suffix_tokens(processor, 16)


def test_reward_section_builds_the_visionthink_reward_or_a_plugin():
    from adaptune.rl.trainer import build_reward_funcs

    direct = build_reward_funcs({"judge": "rule", "penalty": {"weight": 0.2}}, num_generations=4)
    (plugin,) = build_reward_funcs({"plugin": str(ROOT / "rewards/visionthink.py"), "judge": "rule"}, 4)
    assert [f.__name__ for f in direct] == ["accuracy", "format", "resolution_penalty"]
    assert plugin.__name__ == "visionthink" and direct[2].penalty.weight == 0.2
    with pytest.raises(RecipeError, match="grpo.reward"):
        build_reward_funcs({"judge": {"name": "rule", "bogus": 1}}, 4)


def test_demo_recipe_validates():
    plan = parse_grpo_section(load_recipe(DEMO))
    assert plan.eval.fine_fraction == 0.3 and plan.reward["judge"] == "rule"


# ------------------------------------------------------------------------------------------------ real steps


def _lora_state(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_grpo_steps_through_the_tool_path(tmp_path, one_thread):
    """Two real GRPO steps (env + visionthink reward + rule judge), then resume to a third; run dir complete."""
    out = tmp_path / "run"
    run_dir = run_grpo_recipe(tiny_recipe(out, "grpo.eval.enabled=false"))
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "report.md", "DONE", "adapter/adapter_config.json"):
        assert (run_dir / name).exists(), name
    assert latest_checkpoint(run_dir).name == "checkpoint-2"
    assert all((run_dir / "checkpoints" / f"checkpoint-{s}" / "COMPLETE").exists() for s in (1, 2))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train" and "reward" in r]
    assert len(train) == 2
    for key in ("rewards/accuracy/mean", "rewards/format/mean", "rewards/resolution_penalty/mean",  # logged by TRL
                "visionthink/resize_rate",
                "visionthink/visual_tokens", "env/resize_rate", "env/visual_tokens", "tools/call_frequency"):
        assert key in train[0], key
    for r in train:  # TRL summed the parts with the recipe's weights (accuracy 1, format 0.5, penalty 1)
        parts = r["rewards/accuracy/mean"] + 0.5 * r["rewards/format/mean"] + r["rewards/resolution_penalty/mean"]
        assert r["reward"] == pytest.approx(parts, abs=1e-5)
    assert sum(r["tools/call_frequency"] for r in train) > 0  # the tool path ran
    assert any(r["env/visual_tokens"] > 4 for r in train)  # some rollout paid for the full image
    # the adapter moved away from its initialisation (LoRA B starts at zero); the base stayed the seeded one
    lora = _lora_state(run_dir / "adapter")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())
    from peft import PeftModel

    base, _ = build_tiny("qwen3_vl", seed=0)
    reference = {k: v.clone() for k, v in build_tiny("qwen3_vl", seed=0)[0].state_dict().items()}
    adapted = PeftModel.from_pretrained(base, run_dir / "adapter")
    with adapted.disable_adapter():
        for name, value in adapted.get_base_model().state_dict().items():
            if "lora_" not in name:
                torch.testing.assert_close(value, reference[name.replace(".base_layer", "")], rtol=0, atol=0)

    resumed = tiny_recipe(out, "resume=true", "training.max_steps=3", "grpo.eval.num_images=2")
    run_grpo_recipe(resumed)
    state = json.loads((run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    summary = json.loads((run_dir / "eval.json").read_text())
    assert set(summary["evaluation"]["methods"]) == {"policy", "low", "full", "resize_all", "oracle", "before_rl"}
    report = (run_dir / "report.md").read_text()
    assert "Held-out comparison" in report and "rl_curves.png" in report and (run_dir / "plots/rl_curves.png").exists()


def test_time_limit_stops_with_a_checkpoint(tmp_path, one_thread, caplog):
    """The wall-time guard stops a run early with a checkpoint, and says so everywhere (log, metrics, eval, report)."""
    recipe = tiny_recipe(tmp_path / "run", "training.max_steps=50", "grpo.time_limit_minutes=0.0001",
                         "grpo.eval.enabled=false")
    with caplog.at_level("WARNING", logger="adaptune"):
        run_dir = run_grpo_recipe(recipe)
    assert latest_checkpoint(run_dir).name == "checkpoint-1"
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == 1  # top level, as in HF runs
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["steps"] == 1 and summary["max_steps"] == 50 and summary["cut_short"] is True
    assert summary["cut_short_at"] == {"step": 1, "max_steps": 50, "minutes": 0.0001}
    assert "CUT SHORT" in caplog.text and "step 1 of 50" in caplog.text
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "cut_short", "step": 1, "max_steps": 50, "minutes": 0.0001} in events
    assert "CUT SHORT at step 1 of 50" in (run_dir / "report.md").read_text()


def test_runs_stop_at_their_step_count(tmp_path, one_thread):
    """The stop rule is training.max_steps: a guard that does not fire leaves no CUT SHORT mark; a guard <= 0 is
    refused."""
    with pytest.raises(RecipeError, match="time_limit_minutes"):
        parse_grpo_section(tiny_recipe(tmp_path / "bad", "grpo.time_limit_minutes=0", scripted=False))
    recipe = tiny_recipe(tmp_path / "run", "training.max_steps=2", "grpo.time_limit_minutes=60",
                         "grpo.eval.enabled=false")
    run_dir = run_grpo_recipe(recipe)
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["steps"] == 2 and summary["cut_short"] is False and summary["cut_short_at"] is None
    assert "CUT SHORT" not in (run_dir / "report.md").read_text()


def test_full_image_reaches_generation_and_the_loss_forward(tmp_path, one_thread):
    """After a resize, TRL feeds low + full image to the second turn AND to the training forward (no silent drop)."""
    from adaptune.rl.trainer import build_grpo_trainer

    recipe = tiny_recipe(tmp_path / "run", "training.max_steps=1", "training.per_device_train_batch_size=8",
                         "grpo.trainer.num_generations=4")
    trainer, parts = build_grpo_trainer(recipe, tmp_path / "run" / "checkpoints")
    seen = []

    def hook(module, args, kwargs, out):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        seen.append((torch.is_grad_enabled(), {tuple(g.tolist()) for g in grid}))

    parts.loaded.model.model.visual.register_forward_hook(hook, with_kwargs=True)
    trainer.train()
    assert parts.env_factory.stats.resizes > 0
    assert any(not grad and (1, 8, 8) in grids for grad, grids in seen)  # the post-tool generation
    assert any(grad and {(1, 4, 4), (1, 8, 8)} <= grids for grad, grids in seen)  # the loss forward


# ------------------------------------------------------------------------------------------------ scale-out


@pytest.mark.slow
def test_recipe_runs_under_accelerate_ddp_cpu(tmp_path):
    """The tiny recipe on 2 CPU processes (gloo): `accelerate launch --config_file recipes/accelerate/ddp_cpu.yaml`."""
    import yaml

    recipe = tiny_recipe(tmp_path / "run", "training.per_device_train_batch_size=2", "grpo.eval.num_images=2")
    data = yaml.safe_load(Path(TINY).read_text())
    data["output"] = {"dir": str(tmp_path / "run")}
    data["training"]["per_device_train_batch_size"] = 2
    data["grpo"]["trainer"]["generation_kwargs"] = recipe.grpo["trainer"]["generation_kwargs"]
    data["grpo"]["env"]["turn_tokens"] = recipe.grpo["env"]["turn_tokens"]
    data["grpo"]["eval"]["num_images"] = 2
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    # tests/multiproc_run.py runs the recipe as `adaptune train` does and records, per rank and outside the run
    # directory, the world size, the optimizer steps and every write into the run directory
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes/accelerate/ddp_cpu.yaml"), str(ROOT / "tests/multiproc_run.py"), str(tmp_path / "spy"),
           str(path)]
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert (run_dir / "DONE").exists() and (run_dir / "adapter" / "adapter_model.safetensors").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train" and "reward" in r] == [1, 2]
    from test_scale_out import check_ranks

    check_ranks(tmp_path / "spy", data["name"], run_dir, steps=2)  # world of 2, both stepped, only rank 0 wrote


def test_adaptune_eval_on_a_grpo_run(tmp_path, one_thread):
    """`adaptune eval` sends `kind: grpo` runs to the policy evaluation (two-turn loop) instead of a task."""
    from adaptune.eval import evaluate_run

    run_dir = run_grpo_recipe(tiny_recipe(tmp_path / "run", "grpo.eval.enabled=false", "training.max_steps=1"))
    metrics = evaluate_run(run_dir, limit=2)
    assert metrics["n"] == 2 and metrics["visual_tokens"] >= 4 and "eval/policy/accuracy" in metrics


def test_eval_dataset_overrides_the_training_source(tmp_path):
    """Trained on a labelled folder, the policy is still evaluated on the GlyphQA held-out mix when eval.dataset says
    so (the folder's rows are training data with the labels' kind mix)."""
    from adaptune.data import GlyphQAConfig, build_split
    from adaptune.rl.report import evaluation_rows

    folder = tmp_path / "labelled"
    ds = build_split(GlyphQAConfig(seed=0), "rl", num_images=6, fine_fraction=0.0)
    ds.add_column("label", ["low_res_suffices"] * 6).save_to_disk(str(folder))
    plan = parse_grpo_section(load_recipe(TINY, [f"grpo.data.dataset={folder}", "grpo.eval.num_images=10"]))
    own = evaluation_rows(plan)
    assert len(own) == 6 and all(r["kind"] == "coarse" for r in own)
    plan = parse_grpo_section(load_recipe(TINY, [f"grpo.data.dataset={folder}", "grpo.eval.num_images=10",
                                                 "grpo.eval.dataset=glyphqa", "grpo.eval.fine_fraction=0.3"]))
    held_out = evaluation_rows(plan)
    assert len(held_out) == 10 and sum(r["kind"] == "fine" for r in held_out) == 3


def test_headline_ratios_are_strict_json_when_a_denominator_is_zero():
    import json

    from adaptune.rl.report import headline

    def cells(acc, tokens, fine=None, coarse=None):
        out = {"all": {"accuracy": acc, "visual_tokens": tokens}}
        if fine is not None:
            out.update({"fine": {"resize_rate": fine}, "coarse": {"resize_rate": coarse}})
        return out

    never_coarse = headline({"policy": cells(0.8, 8.0, fine=1.0, coarse=0.0), "full": cells(0.0, 16.0)})
    json.dumps(never_coarse, allow_nan=False)  # no Infinity / NaN in eval.json
    assert never_coarse["eval/resize_rate_fine_over_coarse"] is None and never_coarse["target/resize_fine>=3x_coarse"]
    assert never_coarse["eval/accuracy_vs_full"] is None and not never_coarse["target/accuracy>=95%_of_full"]
    never = headline({"policy": cells(0.8, 4.0, fine=0.0, coarse=0.0), "full": cells(0.8, 16.0)})
    assert not never["target/resize_fine>=3x_coarse"] and never["target/accuracy>=95%_of_full"]
    ratio = headline({"policy": cells(0.8, 8.0, fine=0.9, coarse=0.3), "full": cells(0.8, 16.0)})
    assert ratio["eval/resize_rate_fine_over_coarse"] == pytest.approx(3.0) and ratio["target/resize_fine>=3x_coarse"]
