"""`adaptune eval budgets`: every budget method on one held-out set, one table, one Pareto plot."""

from __future__ import annotations

import json

import pytest

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
    assert main(["eval", "budgets", "model=tiny:qwen3_vl", "budgets=4", "reducers=fastervlm", "num_images=2",
                 f"out={out}"]) == 0
    cells = json.loads((out / "budgets.json").read_text())["results"]
    assert [c["name"] for c in cells] == ["full", "downsample@4", "fastervlm@4"]
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "fastervlm@4" in (out / "budgets.md").read_text() and "fastervlm@4" in capsys.readouterr().out


@pytest.mark.parametrize("option", ["reducers=nope", "budgets=0", "colour=red", "budgets=a"])
def test_bad_options_are_clear_errors(option):
    with pytest.raises(RecipeError):
        from adaptune.eval.budgets import budgets_command

        budgets_command(["model=tiny:qwen3_vl", option])
