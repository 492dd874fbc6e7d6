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
    assert main(["eval", str(full), str(half), "--limit", "6", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert [r["visual_tokens"] for r in rows] == [4.0, 1.0]  # 64 px -> 4 tokens, 32 px -> 1 token
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert "| name |" in (tmp_path / "eval.md").read_text()


def test_eval_bare_adapter_needs_recipe(two_runs):
    full, _ = two_runs
    with pytest.raises(RecipeError, match="--recipe PATH"):
        evaluate_run(full / "adapter")
    metrics = evaluate_run(full / "adapter", limit=3, recipe_path=str(full / "config.yaml"))
    assert metrics["n"] == 3


def test_eval_unknown_recipe_key_and_old_options_are_errors(two_runs, capsys):
    assert main(["eval", str(two_runs[0]), "splitt=test"]) == 2  # key=value overrides the run's recipe
    assert "splitt" in capsys.readouterr().err
    assert main(["eval", str(two_runs[0]), "limit=6"]) == 2  # an option of old: now a flag
    assert "--limit" in capsys.readouterr().err


def test_eval_writes_its_own_file_never_the_training_summary(two_runs, capsys):
    full, _ = two_runs
    summary = (full / "eval.json").read_bytes()
    assert main(["eval", str(full), "--limit", "3", "task.params.resolution=half"]) == 0
    assert (full / "eval.json").read_bytes() == summary  # the training summary is untouched
    written = sorted((full / "evaluations").glob("*/eval.json"))
    assert len(written) == 1
    row = json.loads(written[0].read_text())["results"][0]
    assert row["n"] == 3 and row["visual_tokens"] == 1.0  # the override reached the task: half resolution
    assert main(["eval", str(full), "--out", str(full)]) == 2  # a run directory is never the output folder
    assert "training summary" in capsys.readouterr().err
    assert (full / "eval.json").read_bytes() == summary
