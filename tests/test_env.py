"""The resolution environment (one resize, errors, token accounting, missing full image) and the GRPO rows."""

from __future__ import annotations

import inspect

import datasets
import pytest
from PIL import Image

from adaptune.budget import downsample
from adaptune.budget.protocol import SYSTEM_PROMPT, tool_schema
from adaptune.models import build_tiny, get_family
from adaptune.rl.data import DataParams, load_grpo_rows, to_grpo_rows
from adaptune.rl.env import (
    ALREADY_RESIZED,
    MISSING_FULL,
    EnvFactory,
    EnvStats,
    ResolutionEnv,
)

SPEC = get_family("qwen3_vl")


@pytest.fixture(scope="module")
def processor():
    return build_tiny("qwen3_vl")[1]


@pytest.fixture
def full():
    return Image.new("RGB", (128, 128), (200, 30, 30))


def test_one_resize_returns_the_full_image_and_counts_tokens(processor, full):
    env = ResolutionEnv(processor, SPEC)
    env.reset(image=downsample(full), full_image=full, question="q", answer="a")
    assert (env.resized, env.visual_tokens, env.low_tokens, env.full_tokens) == (False, 4, 4, 16)
    blocks = env.resize_image("resize")
    assert [b["type"] for b in blocks] == ["image", "text"]
    assert blocks[0]["image"] is full
    assert env.resized and env.visual_tokens == 4 + 16


def test_second_resize_is_an_error_text_not_an_image(processor, full):
    env = ResolutionEnv(processor, SPEC)
    env.reset(image=downsample(full), full_image=full)
    env.resize_image("resize")
    second = env.resize_image("resize")
    assert isinstance(second, str) and second == ALREADY_RESIZED
    assert env.visual_tokens == 20 and env.tool_calls == 2 and env.errors == [ALREADY_RESIZED]


def test_bad_action_is_an_error_and_does_not_resize(processor, full):
    stats = EnvStats()
    env = ResolutionEnv(processor, SPEC, stats=stats)
    env.reset(image=downsample(full), full_image=full)
    reply = env.resize_image("zoom")
    assert isinstance(reply, str) and "invalid action 'zoom'" in reply
    assert not env.resized and env.visual_tokens == 4 and stats.bad_actions == 1
    assert isinstance(env.resize_image("resize"), list)  # a valid call afterwards still works


def test_missing_full_image_is_counted_and_answered_in_text(processor, full):
    stats = EnvStats()
    env = ResolutionEnv(processor, SPEC, stats=stats)
    env.reset(image=downsample(full), full_image=None)
    assert env.resize_image("resize") == MISSING_FULL
    assert not env.resized and env.visual_tokens == 4
    assert (stats.missing_full, stats.missing_full_requests) == (1, 1)


def test_reset_clears_the_previous_rollout(processor, full):
    env = ResolutionEnv(processor, SPEC)
    env.reset(image=downsample(full), full_image=full)
    env.resize_image("resize")
    env.reset(image=downsample(full, 0.75), full_image=full)
    assert (env.resized, env.tool_calls, env.errors, env.visual_tokens) == (False, 0, [], 9)  # 96 px -> 3x3 tokens


def test_trl_sees_exactly_one_tool_with_the_protocol_schema():
    # GRPOTrainer lists public functions of the class: everything except `reset` becomes a tool
    public = {n for n, _ in inspect.getmembers(ResolutionEnv, predicate=inspect.isfunction) if not n.startswith("_")}
    assert public == {"reset", "resize_image"}
    from transformers.utils import get_json_schema

    assert get_json_schema(ResolutionEnv.resize_image) == tool_schema()


def test_factory_shares_stats_and_snapshot_reports_rates(processor, full):
    factory = EnvFactory(processor, SPEC)
    envs = [factory() for _ in range(4)]
    for i, env in enumerate(envs):
        env.reset(image=downsample(full), full_image=full)
        if i % 2:
            env.resize_image("resize")
    snap = factory.stats.snapshot()
    assert snap["env/rollouts"] == 4 and snap["env/resize_rate"] == 0.5 and snap["env/visual_tokens"] == 12.0
    assert factory.stats.snapshot() == {}  # nothing new since


def test_downsample_halves_width_and_height(full):
    assert downsample(full).size == (64, 64) and downsample(full, 1.0).size == full.size
    with pytest.raises(ValueError):
        downsample(full, 0)


def test_glyphqa_rows_carry_prompt_low_and_full_images():
    rows = load_grpo_rows(DataParams(num_samples=4, fine_fraction=0.5))
    row = rows[0]
    assert row["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert row["prompt"][1]["role"] == "user" and row["prompt"][1]["content"] == row["question"]
    assert row["image"].size == (64, 64) and row["full_image"].size == (128, 128)
    assert sorted(set(rows["kind"])) == ["coarse", "fine"]


def test_rows_without_images_are_handled():
    ds = datasets.Dataset.from_list([
        {"image": Image.new("RGB", (64, 64)), "full_image": None, "question": "q1", "answer": "a", "label": "x"},
        {"image": None, "full_image": None, "question": "q2", "answer": "a", "label": "x"},
        {"image": Image.new("RGB", (64, 64)), "full_image": None, "question": "q3", "answer": "a", "label": "drop"},
    ])
    stats: dict[str, int] = {}
    rows = to_grpo_rows(ds, stats=stats)
    assert stats == {"rows": 1, "dropped_by_label": 1, "no_image": 1, "missing_full_image": 1}
    assert rows[0]["question"] == "q1" and rows[0]["full_image"] is None and rows[0]["image"].size == (64, 64)
    with pytest.raises(ValueError, match="lacks column"):
        to_grpo_rows(ds.remove_columns("answer"))
