"""docs/grpo_yourself.md: the build-it-yourself GRPO example runs as written (a stock `trl.GRPOTrainer` built from
`adaptune.rl`'s public pieces trains one step on the tiny model), and `adaptune.rl` exports what it promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "grpo_yourself.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_public_surface_resolves():
    import adaptune.rl as rl

    for name in rl.__all__:
        assert getattr(rl, name) is not None, name
    with pytest.raises(AttributeError):
        rl.not_a_name  # noqa: B018


def test_the_docs_example_trains_a_step(tmp_path, monkeypatch, one_thread, capsys):
    (block,) = python_blocks(DOC.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    scope = {"OUTPUT_DIR": str(tmp_path / "out"), "__name__": "grpo_yourself"}
    exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102 - the documented example, as written
    trainer, rewards = scope["trainer"], scope["rewards"]
    assert trainer.state.global_step == 1
    assert trainer.reward_func_names == ["accuracy", "format", "resolution_penalty"]
    assert trainer.reward_weights.tolist() == rewards.weights == [1.0, 0.5, 1.0]
    logged = trainer.state.log_history[0]
    for name in trainer.reward_func_names:
        assert f"rewards/{name}/mean" in logged
    assert scope["env_factory"].stats.totals()["rollouts"] == 4  # the environment served every rollout
    moved = [p for n, p in trainer.model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved or logged["loss"] == 0.0  # a zero-advantage step leaves LoRA B at zero; otherwise it moved
    assert capsys.readouterr().out.strip()  # the example's print ran


def test_function_names_win_over_same_named_submodules():
    import importlib

    import adaptune.rl as rl

    importlib.import_module("adaptune.rl.completion_budget")
    assert callable(rl.completion_budget) and rl.completion_budget.__name__ == "completion_budget"
