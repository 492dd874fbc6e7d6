"""Method objectives across tasks: a recipe whose task cannot honour a method setting is a RecipeError (naming the
key and the file), never a silent no-op; the settings live in the adapter config only.

Run: .venv/bin/python -m pytest tests/test_objectives.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from peft import get_peft_model

import adaptune
from adaptune.config import RecipeError, load_recipe, validate_params
from adaptune.methods.mask_tuning import MaskTuningConfig
from adaptune.models import LoadedModel, build_tiny, get_family
from adaptune.registry import METHODS, TASKS
from adaptune.tasks.base import Task, TaskLoss
from adaptune.train.objectives import check_task_params, problems
from adaptune.train.runner import TaskTrainer, load_for_recipe, make_task

RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml")
                 if "accelerate" not in p.parts)


class FeaturesOnlyTask(Task):
    """A task whose loss comes from no logits: mean squared CLIP image features."""

    description = "test: loss without logits"

    def build_datasets(self):
        from adaptune.models.inputs import example_images

        return {"train": [{"image": im} for im in example_images(4, 32)]}

    def collate(self, rows):
        return {"pixel_values": self.processor.image_processor([r["image"] for r in rows],
                                                               return_tensors="pt")["pixel_values"]}

    def loss(self, model, batch):
        return TaskLoss(model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output.pow(2).mean())


@pytest.fixture
def features_only_task():
    TASKS.register("test_features_only", FeaturesOnlyTask)
    yield "test_features_only"
    TASKS._items.pop("test_features_only", None)


def write_recipe(tmp_path, task: dict, adapter: dict, source: str = "tiny:clip") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "model": {"source": source}, "task": task, "adapter": adapter,
                                    "output": {"dir": str(tmp_path / "run")}}))
    return path


def build_task(path: Path):
    recipe = load_recipe(path)
    return make_task(recipe, load_for_recipe(recipe))


def test_gradient_dropout_on_a_task_without_logits_is_refused_naming_key_and_file(tmp_path, features_only_task):
    path = write_recipe(tmp_path, {"name": features_only_task}, {"method": "mask_tuning"})  # gradient_dropout: default
    with pytest.raises(RecipeError) as info:
        build_task(path)
    message = str(info.value)
    assert message.startswith(f"{path}: adapter.params.gradient_dropout: task 'test_features_only' cannot honour")
    assert "gradient_dropout: false" in message


def test_without_gradient_dropout_the_score_l2_still_acts_on_a_task_without_logits(tmp_path, features_only_task):
    from transformers import TrainingArguments

    path = write_recipe(tmp_path, {"name": features_only_task},
                        {"method": "mask_tuning", "params": {"gradient_dropout": False}})
    task = build_task(path)
    model = get_peft_model(task.loaded.model, MaskTuningConfig(gradient_dropout=False))
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=1, per_device_train_batch_size=4,
                             use_cpu=True, report_to=[], remove_unused_columns=False, save_strategy="no",
                             logging_steps=1, disable_tqdm=True)
    trainer = TaskTrainer(task=task, model=model, args=args, train_dataset=task.datasets()["train"],
                          data_collator=task.collate)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "score_l2" in entry]
    assert logged and logged[-1]["score_l2"] > 0 and "gd_keep_rate" not in logged[-1]


def test_trainer_built_directly_refuses_what_the_task_cannot_honour(tmp_path, features_only_task):
    from transformers import TrainingArguments

    model, processor = build_tiny("clip")
    task = FeaturesOnlyTask(None, LoadedModel(model, processor, get_family("clip"), "tiny:clip"))
    peft_model = get_peft_model(model, MaskTuningConfig(gradient_dropout=True))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to=[])
    with pytest.raises(RecipeError, match=r"adapter\.params\.gradient_dropout: task 'test_features_only'"):
        TaskTrainer(task=task, model=peft_model, args=args, train_dataset=task.datasets()["train"])


def test_register_distill_with_mask_tuning_lists_every_problem(tmp_path):
    path = write_recipe(tmp_path, {"name": "register_distill", "params": {"dataset": "synthetic"}},
                        {"method": "mask_tuning"})
    with pytest.raises(RecipeError) as info:
        build_task(path)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{path}: adapter.params.gradient_dropout: task 'register_distill'")
    assert lines[1].startswith(f"{path}: adapter.method: task 'register_distill' has no loss of its own")
    assert "(registers), not 'mask_tuning'" in lines[1]


def test_registers_on_a_task_without_images_is_refused(tmp_path):
    path = write_recipe(tmp_path, {"name": "fewshot_clip"}, {"method": "registers"})
    with pytest.raises(RecipeError, match=r"adapter\.method: task 'fewshot_clip' cannot honour 'registers'.*"
                                          r"self-distillation"):
        build_task(path)


def test_flex_vqa_needs_a_budget_method(tmp_path):
    path = write_recipe(tmp_path, {"name": "flex_vqa"}, {"method": "lora"}, source="tiny:qwen3_vl")
    with pytest.raises(RecipeError, match=r"adapter\.method: task 'flex_vqa' evaluates at visual-token budgets.*"
                                          r"\(flex_projector\), not 'lora'"):
        build_task(path)


@pytest.mark.parametrize("task,keys", [("flex_vqa", {"budgets": [4, 9], "budget_weights": [1, 1]}),
                                       ("register_distill", {"num_views": 3})])
def test_method_settings_left_in_task_params_are_refused(tmp_path, task, keys):
    method = "flex_projector" if task == "flex_vqa" else "registers"
    path = write_recipe(tmp_path, {"name": task, "params": keys}, {"method": method})
    first = next(iter(keys))
    with pytest.raises(RecipeError, match=rf"^{path}: task\.params\.{first}.*put it in adapter\.params "
                                          rf"\(adapter\.params\.{first}"):
        check_task_params(load_recipe(path), TASKS.get(task))
    with pytest.raises(RecipeError, match=rf"task\.params\.{first}"):
        build_task(path)


def test_flex_budgets_come_from_the_adapter_config_only(tmp_path):
    path = write_recipe(tmp_path, {"name": "flex_vqa", "params": {"answer_format": "plain"}},
                        {"method": "flex_projector", "params": {"budgets": [1, 4], "budget_weights": [1, 3]}},
                        source="tiny:qwen3_vl")
    task = build_task(path)
    assert not hasattr(task.params, "budgets") and not hasattr(task.params, "budget_weights")


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(p.parents[2])) for p in RECIPES])
def test_shipped_recipes_ask_nothing_their_task_cannot_honour(path):
    recipe = load_recipe(path)
    if recipe.kind != "adapter":
        return
    task_cls = TASKS.get(recipe.task.name)
    check_task_params(recipe, task_cls)
    method = recipe.adapter.method
    info = METHODS.get(method) if method in METHODS else None
    config = validate_params(recipe.adapter.params, info.config_cls, "adapter.params") if info else None
    assert problems(task_cls, method, info, config) == []


def test_every_method_declares_its_objective_or_none():
    for name, info in adaptune.METHODS.items():
        if info.objective is None:
            continue
        config = info.config_cls()
        for requirement in info.objective.requirements(config):
            assert requirement.reason and (requirement.key is None or hasattr(config, requirement.key)), name


def test_the_objective_is_found_through_wrappers():
    from adaptune.methods.objective import active_method

    from peft import LoraConfig

    plain, _ = build_tiny("clip")
    assert active_method(plain) is None
    lora = get_peft_model(build_tiny("clip")[0], LoraConfig(target_modules=["q_proj"], r=2))
    assert active_method(lora) is None  # a PEFT method adaptune does not register: no objective
    peft_model = get_peft_model(build_tiny("clip")[0], MaskTuningConfig())
    info, config = active_method(torch.nn.DataParallel(peft_model))
    assert info.name == "mask_tuning" and config is peft_model.peft_config["default"]
