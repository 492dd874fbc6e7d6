"""Every recipe under recipes/ runs one training step on the tiny model of its family, so a shipped recipe cannot rot.

The recipe is loaded and validated exactly as shipped (including its `grpo:` section and task / adapter params);
then only the keys listed in `SWAPS` change, each because a 2-core CPU without network cannot honour it. Everything
else (the method, its params, the task, the reward and penalty, the GRPO trainer settings, the penalty variant, the
eval methods) runs as written, so a recipe whose keys no longer validate or no longer run fails here.

Run: .venv/bin/python -m pytest tests/test_recipes_run.py -q -m slow   (measured: see the report; ~2 min on 2 cores)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

import adaptune
from adaptune.config import Recipe, load_recipe, validate_params
from adaptune.registry import FAMILIES, TASKS

ROOT = Path(__file__).parent.parent / "recipes"
RECIPES = sorted(p for p in ROOT.rglob("*.yaml") if "accelerate" not in p.parts)

# The swap list: key -> what the one-step run uses instead, and why a CPU test cannot keep it. Nothing else changes.
SWAPS = {
    "model.source": "tiny:<family> (no weights are downloaded; <family> is model.family or the recipe's folder, "
                    "recipes/<family>/<task>/<variant>.yaml)",
    "model.dtype, model.quantization, training.bf16": "fp32 / none / false: bf16 and bitsandbytes need a GPU",
    "training.max_steps, per_device_train_batch_size, gradient_accumulation_steps, save_steps, logging_steps, "
    "eval_limit": "1 step, batch 2 (GRPO: one group of grpo.trainer.num_generations), no accumulation",
    "output.dir": "a temporary folder",
    "task.params num_train / num_eval / shots": "at most 8 / 4 / 2 rows",
    "task.params image_size": "dropped: the tiny model's processor size (a real checkpoint's 224 / 352 px does not "
                              "fit a 32 px tiny ViT)",
    "task.params dataset, cache_dir": "hub ids and folders -> generated glyphqa; caches -> the temporary folder",
    "grpo.data": "generated glyphqa, 4 rows, no min/max pixel normalisation (it would upscale 128 px images to "
                 "thousands of tokens)",
    "grpo.env.turn_tokens, grpo.eval.max_new_tokens": "8 tokens per turn (a random tiny model never stops earlier)",
    "grpo.reward.judge, grpo.eval.judge": "rule (an LLM judge needs a server)",
    "grpo.trainer use_vllm, vllm_*, num_generations": "transformers generation (vLLM needs a GPU); 2 rollouts",
    "grpo.eval dataset / split / num_images / batch_size": "2 generated glyphqa test images",
    "grpo.time_limit_minutes": "dropped (one step)",
}
# DeepSpeed / FSDP / multi-GPU are the launcher's (accelerate configs under recipes/accelerate/), not recipe keys.


def family_of(recipe: Recipe, path: Path) -> str:
    """`model.family`, else the recipe's folder (recipes/<family>/...); must be a registered family."""
    if recipe.model.source.startswith("tiny:"):
        return recipe.model.source.split(":", 1)[1]
    family = recipe.model.family or path.relative_to(ROOT).parts[0]
    assert family in FAMILIES, (f"{path}: cannot tell the family of model.source={recipe.model.source!r}: set "
                                f"model.family or put the recipe under recipes/<family>/")
    return family


def _small(params: dict[str, Any], key: str, most: int) -> None:
    if isinstance(params.get(key), int):
        params[key] = min(params[key], most)


def one_step(recipe: Recipe, path: Path, tmp_path: Path) -> Recipe:
    """The shipped recipe with the `SWAPS` applied (a copy; `recipe` is left as loaded)."""
    r = copy.deepcopy(recipe)
    r.model.source = f"tiny:{family_of(recipe, path)}"
    r.model.dtype = None
    r.model.quantization = None
    t = r.training
    t.bf16 = False
    t.max_steps, t.gradient_accumulation_steps, t.save_steps, t.logging_steps = 1, 1, 1, 1
    t.per_device_train_batch_size = 2
    t.eval_limit = 4
    r.output.dir = str(tmp_path / "run")
    r.output.overwrite = True
    params = r.task.params
    for key, most in (("num_train", 8), ("num_eval", 4), ("shots", 2)):
        _small(params, key, most)
    params.pop("image_size", None)
    if "dataset" in params and params["dataset"] not in ("glyphqa", "synthetic"):
        params["dataset"] = "glyphqa"
    if params.get("cache_dir"):
        params["cache_dir"] = str(tmp_path / "cache")
    if r.kind == "grpo":
        g = r.grpo
        g["data"] = {**{k: v for k, v in g.get("data", {}).items() if k in ("downsample", "seed")},
                     "dataset": "glyphqa", "num_samples": 4}
        g.setdefault("env", {})["turn_tokens"] = 8
        g.setdefault("reward", {})["judge"] = "rule"
        trainer = {k: v for k, v in g.get("trainer", {}).items() if k != "use_vllm" and not k.startswith("vllm_")}
        trainer["num_generations"] = 2
        g["trainer"] = trainer
        evaluation = {k: v for k, v in g.get("eval", {}).items() if k in ("enabled", "methods", "fine_fraction")}
        g["eval"] = {**evaluation, "num_images": 2, "batch_size": 2, "max_new_tokens": 8, "judge": "rule"}
        g.pop("time_limit_minutes", None)
    return r


def validate_as_shipped(recipe: Recipe) -> None:
    """What a run would check before loading a model, on the recipe as shipped (no swaps)."""
    if recipe.kind == "grpo":
        from adaptune.rl.sections import parse_grpo_section

        parse_grpo_section(recipe)
        return
    validate_params(recipe.task.params, TASKS.get(recipe.task.name).Params, "task.params")
    method = recipe.adapter.method
    if method in adaptune.METHODS:
        validate_params(recipe.adapter.params, adaptune.METHODS.get(method).config_cls, "adapter.params")
    elif method == "lora":
        from peft import LoraConfig

        validate_params(recipe.adapter.params, LoraConfig, "adapter.params")
    else:
        assert method == "none", f"unknown adapter.method {method!r}"


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_runs_one_step_on_its_tiny_stand_in(path, tmp_path, one_thread):
    from adaptune.train import run_recipe

    shipped = load_recipe(path)
    validate_as_shipped(shipped)
    recipe = one_step(shipped, path, tmp_path)
    run_dir = run_recipe(recipe)
    assert (run_dir / "DONE").exists()
    assert (run_dir / "metrics.jsonl").read_text().strip()
    if recipe.kind == "grpo" and recipe.adapter.method == "none":  # a full fine-tune: every weight trained and saved
        summary = json.loads((run_dir / "eval.json").read_text())
        assert summary["trainable_params"] == summary["total_params"]
        assert (run_dir / "model" / "model.safetensors").exists()


def test_swaps_leave_the_method_and_trainer_settings_alone(tmp_path):
    """The swap list is what it says: the adapter, the task name and the GRPO trainer's own settings pass through."""
    path = ROOT / "qwen2_5_vl" / "visionthink" / "full.yaml"
    shipped = load_recipe(path)
    swapped = one_step(shipped, path, tmp_path)
    assert swapped.model.source == "tiny:qwen2_5_vl" and shipped.model.source == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert swapped.adapter == shipped.adapter and swapped.task.name == shipped.task.name
    assert swapped.training.learning_rate == shipped.training.learning_rate == 1e-6
    kept = {k: v for k, v in shipped.grpo["trainer"].items()
            if k not in ("use_vllm", "num_generations") and not k.startswith("vllm_")}
    assert kept.items() <= swapped.grpo["trainer"].items() and swapped.grpo["trainer"]["beta"] == 1e-3
    assert swapped.grpo["reward"]["penalty"] == shipped.grpo["reward"]["penalty"]
    assert "use_vllm" not in swapped.grpo["trainer"] and shipped.grpo["trainer"]["use_vllm"] is True
