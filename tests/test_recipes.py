"""Recipes: typed validation with errors that name the key and the file; every shipped recipe validates."""

from __future__ import annotations

from pathlib import Path

import pytest

import adaptune
from adaptune.config import RecipeError, load_recipe, validate_params
from adaptune.registry import TASKS

RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "name: x\ntask: {name: vqa_sft}\ntraining: {batch_sizee: 3}\n")
    with pytest.raises(RecipeError, match=r"recipe\.yaml.*training\.batch_sizee"):
        load_recipe(path)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "name: x\ntask: {name: vqa_sft}\ntraining: {max_steps: five}\n")
    with pytest.raises(RecipeError, match=r"training\.max_steps"):
        load_recipe(path)


def test_missing_required_field(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe\.yaml.*name"):
        load_recipe(write(tmp_path, "task: {name: vqa_sft}\n"))


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_apply_and_are_checked(tmp_path):
    path = write(tmp_path, "name: x\ntask: {name: vqa_sft}\n")
    recipe = load_recipe(path, ["training.max_steps=7", "adapter.params.r=4"])
    assert recipe.training.max_steps == 7 and recipe.adapter.params == {"r": 4}
    with pytest.raises(RecipeError, match=r"override.*training\.max_stepz"):
        load_recipe(path, ["training.max_stepz=7"])
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe(path, ["training.max_steps"])


def test_component_params_validated_by_their_own_schema():
    from peft import LoraConfig

    assert validate_params({"r": 4}, LoraConfig, "adapter.params").r == 4
    with pytest.raises(RecipeError, match=r"adapter\.params\.rank: unknown key"):
        validate_params({"rank": 4}, LoraConfig, "adapter.params")
    with pytest.raises(RecipeError, match=r"adapter\.params\.r: .*Integer"):
        validate_params({"r": "four"}, LoraConfig, "adapter.params")
    with pytest.raises(RecipeError, match=r"task\.params\.num_trian"):
        validate_params({"num_trian": 4}, TASKS.get("vqa_sft").Params, "task.params")


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(p.parents[2])) for p in RECIPES])
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.name
    if recipe.kind == "adapter":
        validate_params(recipe.task.params, TASKS.get(recipe.task.name).Params, "task.params")
        assert recipe.adapter.method in {"lora", "none", *adaptune.METHODS}


def test_task_on_the_wrong_family_is_a_recipe_error():
    from adaptune.train.runner import load_for_recipe, make_task

    recipe = load_recipe(data={"name": "x", "model": {"source": "tiny:qwen3_vl"}, "task": {"name": "segmentation"}})
    with pytest.raises(RecipeError, match="task.name: task SegmentationTask needs a model of family clipseg, "
                                          "got 'qwen3_vl'"):
        make_task(recipe, load_for_recipe(recipe))


def test_recipe_kinds_dispatch_through_the_registry():
    """`run_recipe` finds the runner for `kind` in RUN_KINDS (the RL layer registers "grpo"); others are refused."""
    from adaptune.registry import RUN_KINDS
    from adaptune.rl.run import run_grpo_recipe
    from adaptune.train import run_recipe

    assert RUN_KINDS.get("grpo") is run_grpo_recipe
    recipe = load_recipe(data={"name": "x", "kind": "bogus", "task": {"name": "vqa_sft"}})
    with pytest.raises(RecipeError, match="kind must be 'adapter' or 'grpo', got 'bogus'"):
        run_recipe(recipe)


@pytest.mark.parametrize("old, new", [("batch_size", "per_device_train_batch_size"),
                                      ("grad_accum", "gradient_accumulation_steps"),
                                      ("lr_scheduler", "lr_scheduler_type"), ("warmup", "warmup_steps")])
def test_old_training_names_name_their_transformers_key(tmp_path, old, new):
    path = write(tmp_path, f"name: x\ntask: {{name: vqa_sft}}\ntraining: {{{old}: 1}}\n")
    with pytest.raises(RecipeError, match=rf"recipe\.yaml: training\.{old}: renamed to training\.{new}"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=rf"override.*training\.{old}: renamed to training\.{new}"):
        load_recipe(write(tmp_path, "name: x\ntask: {name: vqa_sft}\n"), [f"training.{old}=1"])


def test_training_fields_are_the_trainingarguments_fields(tmp_path):
    """Every `training:` key except adaptune's own (eval_limit, extra) is a TrainingArguments field of that name,
    and it arrives there unchanged."""
    import dataclasses

    from transformers import TrainingArguments

    from adaptune.config import TrainingSection
    from adaptune.train.convert import to_training_arguments

    ours = {f.name for f in dataclasses.fields(TrainingSection)} - {"eval_limit", "extra"}
    assert ours <= {f.name for f in dataclasses.fields(TrainingArguments)}
    recipe = load_recipe(write(tmp_path, "name: x\ntask: {name: vqa_sft}\n"), [
        "training.per_device_train_batch_size=3", "training.gradient_accumulation_steps=2",
        "training.lr_scheduler_type=linear", "training.warmup_steps=0.25", "training.weight_decay=0.5"])
    args = to_training_arguments(recipe, tmp_path / "ck")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.lr_scheduler_type.value,
            args.warmup_steps, args.weight_decay) == (3, 2, "linear", 0.25, 0.5)
    assert args.get_warmup_steps(100) == 25
    with pytest.raises(RecipeError, match="training.extra.learning_rate: a training field"):
        load_recipe(write(tmp_path, "name: x\ntask: {name: vqa_sft}\ntraining: {extra: {learning_rate: 1.0}}\n"))
    with pytest.raises(RecipeError, match="training.extra.not_a_field: not a transformers.TrainingArguments field"):
        to_training_arguments(load_recipe(data={"name": "x", "task": {"name": "vqa_sft"},
                                                "training": {"extra": {"not_a_field": 1}}}), tmp_path)
