"""`adaptune eval`: one run, several runs side by side, bare adapter folders, the Pareto front."""

from __future__ import annotations

import json

import pytest

from adaptune.cli import main
from adaptune.config import RecipeError
from adaptune.eval import evaluate_run, pareto_front
from test_train import recipe_for
from adaptune.train import run_recipe


def test_pareto_front():
    points = [(16, 0.9), (4, 0.5), (8, 0.4), (20, 0.9), (4, 0.6)]
    assert pareto_front(points) == [4, 0]


@pytest.fixture(scope="module")
def two_runs(vqa_dataset_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    full = run_recipe(recipe_for(vqa_dataset_dir, base / "full", max_steps=2))
    recipe = recipe_for(vqa_dataset_dir, base / "half", max_steps=2)
    recipe.task.params["resolution"] = "half"
    recipe.name = "half"
    return full, run_recipe(recipe)


def test_eval_compares_runs(two_runs, tmp_path, capsys):
    full, half = two_runs
    assert main(["eval", str(full), str(half), "limit=6", f"out={tmp_path}"]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert [r["visual_tokens"] for r in rows] == [4.0, 1.0]  # 64 px -> 4 tokens, 32 px -> 1 token
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert "| name |" in (tmp_path / "eval.md").read_text()


def test_eval_bare_adapter_needs_recipe(two_runs):
    full, _ = two_runs
    with pytest.raises(RecipeError, match="recipe=PATH"):
        evaluate_run(full / "adapter")
    metrics = evaluate_run(full / "adapter", limit=3, recipe_path=str(full / "config.yaml"))
    assert metrics["n"] == 3


def test_eval_unknown_option_is_an_error(two_runs, capsys):
    assert main(["eval", str(two_runs[0]), "splitt=test"]) == 2
    assert "unknown option 'splitt'" in capsys.readouterr().err
