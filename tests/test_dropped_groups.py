"""Issue 14: a GRPO run whose judge fails on most groups aborts with a clear message instead of training nothing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from adaptune.rl.rewards import DropGuard, DroppedGroupsError, make_accuracy_reward, make_visionthink_reward

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer  # noqa: E402

ANSWERS = ["<think>a</think><answer>7</answer>"] * 4


def garbage_judge(url: str) -> dict:
    return {"name": "openai", "base_url": url, "model": "m", "max_retries": 0, "trust_env": False}


def test_reward_aborts_when_every_group_is_dropped() -> None:
    """A judge whose replies never parse: every group is dropped; after `dropped_window` calls the reward raises."""
    with FaultServer(default="garbage") as server:
        reward = make_visionthink_reward(judge=garbage_judge(server.base_url), num_generations=2, dropped_window=3)
        for _ in range(2):  # the window is not full yet: the groups are dropped (None), training goes on
            rewards = asyncio.run(reward(prompts=["a", "a", "b", "b"], completions=ANSWERS, answer=["7"] * 4))
            assert rewards == [None] * 4
        with pytest.raises(DroppedGroupsError, match=r"100% of reward groups \(6 of 6\).*max_dropped_share=0.5") as e:
            asyncio.run(reward(prompts=["a", "a", "b", "b"], completions=ANSWERS, answer=["7"] * 4))
        assert "parse_failures" in str(e.value)  # the judge's counters say why
        accuracy = make_accuracy_reward(judge=garbage_judge(server.base_url), num_generations=2, dropped_window=1)
        with pytest.raises(DroppedGroupsError):
            asyncio.run(accuracy(prompts=["a", "a", "b", "b"], completions=ANSWERS, answer=["7"] * 4))


def test_guard_threshold_window_and_off_switch() -> None:
    guard = DropGuard(max_share=0.5, window=2)
    guard.update(1, 2)
    guard.update(1, 2)  # exactly 50%: not above the threshold
    guard.update(0, 2)
    window = DropGuard(0.5, 2)
    window.update(1, 2)  # one call: the window is not full, no verdict yet
    with pytest.raises(DroppedGroupsError, match=r"75% of reward groups \(3 of 4\)"):
        window.update(2, 2)
    off = DropGuard(max_share=None, window=1)
    for _ in range(5):
        off.update(4, 4)
    with pytest.raises(ValueError, match="max_dropped_share"):
        DropGuard(max_share=1.5)
    rule = make_visionthink_reward(judge="rule", num_generations=2, dropped_window=1)  # healthy judge: never aborts
    assert None not in asyncio.run(rule(prompts=["a", "a", "b", "b"], completions=ANSWERS, answer=["7"] * 4))


def test_grpo_run_aborts_with_the_reason_recorded(tmp_path, one_thread) -> None:
    """A real tiny GRPO run with a judge that only returns garbage stops at the first window, writes ABORTED and
    an `aborted` metrics event, and never writes DONE (it used to train 'nothing' for all its steps and exit 0)."""
    from test_grpo import tiny_recipe

    from adaptune.rl.run import run_grpo_recipe

    with FaultServer(default="garbage") as server:
        recipe = tiny_recipe(tmp_path / "run", "grpo.eval.enabled=false", "training.max_steps=20")
        recipe.grpo["reward"]["judge"] = garbage_judge(server.base_url)
        recipe.grpo["reward"]["dropped_window"] = 1
        with pytest.raises(DroppedGroupsError, match="were dropped"):
            run_grpo_recipe(recipe)
    run_dir = next(p for p in (tmp_path / "run").rglob("metrics.jsonl")).parent
    assert (run_dir / "ABORTED").read_text().startswith("100% of reward groups")
    assert not (run_dir / "DONE").exists()
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    aborted = [e for e in events if e["event"] == "aborted"]
    assert len(aborted) == 1 and aborted[0]["step"] < 20 and "judge" in aborted[0]["reason"]

