"""`adaptune eval budgets`: every budget method on one held-out set, one table, one Pareto plot."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from adaptune.cli import main
from adaptune.config import RecipeError
from adaptune.eval.budgets import budget_sweep, downsample_factor_for
from adaptune.models import load_model


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny:qwen3_vl")


def test_downsample_factor_hits_the_budget(loaded):
    # 128 px: 16 tokens at full size; the family's own resize rules decide what a smaller image costs
    assert downsample_factor_for(loaded, (128, 128), 16) == 1.0
    assert downsample_factor_for(loaded, (128, 128), 4) == 0.5
    factor = downsample_factor_for(loaded, (128, 128), 9)
    assert factor is not None and 0.5 < factor < 1.0
    assert downsample_factor_for(loaded, (128, 128), 7) is None  # no square image size costs 7 tokens


def test_sweep_cells_cover_every_method_and_budget(loaded):
    from adaptune.rl.data import DataParams, heldout_rows

    rows = heldout_rows(DataParams(), num_images=3)
    cells = budget_sweep(loaded, rows, [1, 4], reducers=["divprune", "tome"], batch_size=8)
    names = [c["name"] for c in cells]
    assert names == ["full", "downsample@1", "downsample@4", "divprune@1", "divprune@4", "tome@1", "tome@4"]
    tokens = {c["name"]: c["visual_tokens"] for c in cells}
    assert tokens["full"] == 16 and tokens["divprune@1"] == 1 and tokens["tome@4"] == 4 and tokens["downsample@4"] == 4
    assert all(c["n"] == 3 and 0.0 <= c["accuracy"] <= 1.0 for c in cells)


def test_command_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["eval", "budgets", "--model", "tiny:qwen3_vl", "--budgets", "4", "--reducers", "fastervlm",
                 "--num-images", "2", "--out", str(out)]) == 0
    cells = json.loads((out / "budgets.json").read_text())["results"]
    assert [c["name"] for c in cells] == ["full", "downsample@4", "fastervlm@4"]
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "fastervlm@4" in (out / "budgets.md").read_text() and "fastervlm@4" in capsys.readouterr().out


@pytest.mark.parametrize("option", ["reducers=nope", "budgets=0", "colour=red", "budgets=a"])
def test_bad_options_are_clear_errors(option):
    with pytest.raises(RecipeError):
        from adaptune.eval.budgets import budgets_command

        budgets_command(["model=tiny:qwen3_vl", option])


# ------------------------------------------------------------------------------------------------ recipe budget:

def _recipe(tmp_path, budget: dict, task: str = "vqa_sft", kind: str = "adapter"):
    from adaptune.config import load_recipe

    data = {"name": "reduced", "model": {"source": "tiny:qwen3_vl"}, "kind": kind,
            "task": {"name": task, "params": {"num_train": 8, "num_eval": 4, "answer_format": "plain",
                                              "max_new_tokens": 2}},
            "adapter": {"method": "lora", "params": {"r": 2}}, "budget": budget,
            "training": {"max_steps": 2, "per_device_train_batch_size": 4, "save_steps": 2, "eval_limit": 4},
            "output": {"dir": str(tmp_path / "run")}}
    return load_recipe(data=data)


def test_recipe_reducer_acts_in_training_and_eval(tmp_path):
    from adaptune.eval import evaluate_run
    from adaptune.train import run_recipe

    run_dir = run_recipe(_recipe(tmp_path, {"reducer": "divprune", "tokens": 4}))
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["reducer"] == "divprune" and summary["eval/visual_tokens"] == 4
    assert evaluate_run(run_dir, limit=2)["visual_tokens"] == 4  # rebuilt from config.yaml with the same reducer


@pytest.mark.parametrize("budget, task, message", [
    ({"tokens": 4}, "vqa_sft", "budget.tokens"),
    ({"reducer": "nope", "tokens": 4}, "vqa_sft", "unknown token reducer"),
    ({"reducer": "tome"}, "vqa_sft", "budget.tokens"),
])
def test_recipe_budget_that_cannot_act_is_refused(tmp_path, budget, task, message):
    from adaptune.train import run_recipe

    with pytest.raises(RecipeError, match=message):
        run_recipe(_recipe(tmp_path, budget, task))
    assert not (tmp_path / "run").exists()  # refused before the run directory is touched


def test_grpo_recipe_with_a_reducer_is_refused():
    from adaptune.config import load_recipe
    from adaptune.rl.sections import parse_grpo_section

    recipe = load_recipe("recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml", ["budget.reducer=tome",
                                                                                "budget.tokens=4"])
    with pytest.raises(RecipeError, match="resize tool"):
        parse_grpo_section(recipe)


def test_an_adapter_without_the_asked_budgets_is_refused_not_skipped(tmp_path, loaded):
    from peft import LoraConfig, get_peft_model

    from adaptune.adapters import save_adapter
    from adaptune.budget import BudgetError
    from adaptune.models import load_model

    other = load_model("tiny:qwen3_vl")
    save_adapter(get_peft_model(other.model, LoraConfig(r=2, target_modules=["q_proj"])), tmp_path / "lora")
    rows = [{"image": Image.new("RGB", (128, 128)), "question": "q", "answer": "a"}]
    with pytest.raises(BudgetError, match="trained at budgets none"):
        budget_sweep(loaded, rows, [4], reducers=[], adapters=[tmp_path / "lora"])
