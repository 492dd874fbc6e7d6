"""The two-turn inference loop: a tool call triggers the second turn with the full image; baselines; comparisons."""

from __future__ import annotations

import pytest
from PIL import Image

from adaptune.budget import two_turn
from adaptune.budget.protocol import is_resize_call as resize_call
from adaptune.budget.protocol import tool_call_text
from adaptune.budget.two_turn import answer_with_resolution_policy, vision_token_ids
from adaptune.models import build_tiny, get_family
from adaptune.rl.inference import compare_methods

CALL = "<think>too small</think>\n" + tool_call_text()


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("qwen3_vl")


@pytest.fixture
def scripted(monkeypatch):
    """Replace generation: answers depend on the question text; records every call."""
    calls = []

    def fake(model, processor, texts, images, max_new_tokens=64, do_sample=False, temperature=1.0, suppress=None):
        calls.append({"texts": texts, "images": images, "suppress": suppress})
        outs = []
        for text in texts:
            if "<tool_response>" in text:
                outs.append("<think>sharp now</think><answer>7</answer>")
            elif text.endswith("<answer>"):  # a prefilled direct answer
                outs.append("3</answer>")
            elif "digit" in text.split("<|im_start|>user")[-1]:
                outs.append(CALL)
            elif "broken" in text:
                outs.append('<think>x</think><tool_call>{"name": "resize_image", "arguments": {"action": "zoom"}}'
                            '</tool_call>')
            else:
                outs.append("<think>easy</think><answer>3</answer>")
        return outs

    monkeypatch.setattr(two_turn, "generate_texts", fake)
    return calls


IMAGES = [Image.new("RGB", (128, 128), (200, 30, 30)), Image.new("RGB", (128, 128), (30, 30, 200))]


def test_tool_call_triggers_second_turn_with_full_image(tiny, scripted):
    model, processor = tiny
    results = answer_with_resolution_policy(model, processor, IMAGES, ["What digit is written?", "How many?"])
    assert [(r.resized, r.turns, r.visual_tokens, r.answer) for r in results] == [(True, 2, 20, "7"),
                                                                                (False, 1, 4, "3")]
    first, second = scripted
    assert [im[0].size for im in first["images"]] == [(64, 64), (64, 64)]
    assert len(second["texts"]) == 1 and "<tool_response>" in second["texts"][0]
    assert [im.size for im in second["images"][0]] == [(64, 64), (128, 128)]
    assert second["texts"][0].count("<|image_pad|>") == 2  # low image in the user turn, full image in the tool turn
    assert set(first["suppress"]) >= set(vision_token_ids(processor))
    assert results[0].raw[0] == CALL


def test_malformed_tool_call_does_not_resize(tiny, scripted):
    model, processor = tiny
    (result,) = answer_with_resolution_policy(model, processor, IMAGES[:1], ["broken question"])
    assert not result.resized and result.turns == 1 and result.answer is None and len(scripted) == 1


def test_baselines_and_forced_decisions(tiny, scripted):
    model, processor = tiny
    questions = ["What digit is written?", "How many?"]
    low = answer_with_resolution_policy(model, processor, IMAGES, questions, always="low")
    full = answer_with_resolution_policy(model, processor, IMAGES, questions, always="full")
    assert [(r.resized, r.visual_tokens, r.answer) for r in low] == [(False, 4, "3")] * 2
    assert [(r.resized, r.visual_tokens, r.answer) for r in full] == [(False, 16, "3")] * 2
    assert scripted[1]["images"][0][0].size == (128, 128)
    forced = answer_with_resolution_policy(model, processor, IMAGES, ["How many?", "How many?"], resize=[True, False])
    assert [(r.resized, r.visual_tokens, r.turns, r.answer) for r in forced] == [(True, 20, 2, "7"), (False, 4, 1, "3")]
    with pytest.raises(ValueError):
        answer_with_resolution_policy(model, processor, IMAGES, questions, always="low", resize=[True, True])


def test_compare_methods_reports_per_kind(tiny, scripted):
    model, processor = tiny
    rows = [{"image": IMAGES[0], "question": "What digit is written?", "answer": "7", "kind": "fine"},
            {"image": IMAGES[1], "question": "How many?", "answer": "3", "kind": "coarse"}]
    out = compare_methods(model, processor, rows, ["policy", "low", "full", "resize_all", "oracle", "before_rl"])
    policy = out["methods"]["policy"]
    assert policy["all"]["accuracy"] == 1.0 and policy["all"]["visual_tokens"] == 12.0
    assert policy["fine"]["resize_rate"] == 1.0 and policy["coarse"]["resize_rate"] == 0.0
    assert out["methods"]["low"]["fine"]["accuracy"] == 0.0 and out["methods"]["oracle"]["all"]["accuracy"] == 1.0
    assert out["methods"]["resize_all"]["all"] == {"accuracy": 0.5, "visual_tokens": 20.0, "resize_rate": 1.0, "n": 2}
    assert out["skipped"] == {"before_rl": "no adapter to disable"}



def test_real_tiny_model_runs_every_mode(tiny, one_thread):
    model, processor = tiny
    for kwargs in ({}, {"resize": [True, False]}):
        results = answer_with_resolution_policy(model, processor, IMAGES, ["a?", "b?"], max_new_tokens=3, **kwargs)
        assert len(results) == 2 and all(r.visual_tokens in (4, 16, 20) for r in results)
    assert resize_call(CALL) and not resize_call("<think>x</think><answer>1</answer>")
    assert get_family("qwen3_vl").visual_tokens(processor, 64, 64) == 4
