"""A judge API key planted in the environment never lands in the run directory (configs, logs, reports, caches)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer  # noqa: E402
from test_grpo import tiny_recipe  # noqa: E402

from adaptune.rl.run import run_grpo_recipe  # noqa: E402

PLANTED = "sk-planted-SECRET-4b1d7c0ffee"


def test_planted_key_is_not_written_anywhere(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("ADAPTUNE_TEST_JUDGE_KEY", PLANTED)
    with FaultServer(default="grade") as server:
        recipe = tiny_recipe(tmp_path / "run", "grpo.eval.enabled=false", "training.max_steps=1")
        recipe.grpo["reward"]["judge"] = {"name": "openai", "base_url": server.base_url, "model": "local",
                                          "api_key_env": "ADAPTUNE_TEST_JUDGE_KEY", "timeout_s": 10.0,
                                          "cache_path": str(tmp_path / "run" / "judge_cache.sqlite")}
        run_dir = run_grpo_recipe(recipe)
        # the key really was used (sent as a bearer token), so the test would notice a leak
        assert any(PLANTED in str(r["headers"]) for r in server.requests), "judge did not authenticate"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".sqlite" for p in files)
    for path in files:
        assert PLANTED.encode() not in path.read_bytes(), f"API key leaked into {path}"
