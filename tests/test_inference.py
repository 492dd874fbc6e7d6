"""The two-turn inference loop: a tool call triggers the second turn with the full image; baselines; comparisons."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from adaptune.budget import two_turn
from adaptune.budget.protocol import is_resize_call as resize_call
from adaptune.budget.protocol import tool_call_text
from adaptune.budget.two_turn import answer_with_resolution_policy, vision_token_ids
from adaptune.budget.resolution import TokenCounter
from adaptune.models import build_tiny, get_family, load_model, prepare_chat_template
from adaptune.rl.inference import compare_methods

CALL = "<think>too small</think>\n" + tool_call_text()


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("qwen3_vl")


@pytest.fixture
def scripted(monkeypatch):
    """Replace generation: answers depend on the question text; records every call."""
    calls = []

    def fake(model, processor, texts, images, max_new_tokens=64, do_sample=False, temperature=1.0, suppress=None,
             **kv_reuse):
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


# ------------------------------------------------------------------------------------------------ KV reuse


def force_protocol(model, processor, answer: str = "3", big: float = 60.0) -> None:
    """Bias a model's greedy turns onto the protocol (every first turn calls the tool, the second answers), so a
    random-weight model takes the two-turn path; the raw logits the tests compare are the model's own."""
    from test_grpo import protocol_turns

    t = protocol_turns(processor, answer)
    header, after_tool, tool, final = t["header"], t["after_tool"], t["tool"], t["final"]
    bias = {}
    for before, seq in ((header, tool), (after_tool, final)):  # keyed on the turn header: no ambiguity
        bias.update({tuple(before + seq[: k + 1]): big for k in range(len(seq))})
    model.generation_config.sequence_bias = bias


def _logits_per_forward(model):
    """Records (tokens fed, last-position logits) of every forward; returns the list and the hook handle."""
    seen = []

    def hook(module, args, kwargs, out):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append((ids.shape[1], out.logits[:, -1].detach().clone()))

    return seen, model.register_forward_hook(hook, with_kwargs=True)


def _two_ways(model, processor, images, questions, **kwargs):
    out = {}
    for kv in (True, False):
        seen, handle = _logits_per_forward(model)
        try:
            results = answer_with_resolution_policy(model, processor, images, questions, kv_reuse=kv, **kwargs)
        finally:
            handle.remove()
        out[kv] = (results, seen)
    return out


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_kv_reuse_equals_reencoding_on_tiny_families(family, one_thread):
    """The second turn continued from the first turn's cache gives the re-encoding path's logits (float tolerance)
    and answers, while prefilling fewer tokens; rows of different lengths share one left-padded batch."""
    model, processor = build_tiny(family, seed=1)
    prepare_chat_template(processor, get_family(family), tool_calling=True)  # Qwen2.5-VL's own drops tool images
    force_protocol(model, processor)
    side = 128 if family == "qwen3_vl" else 112
    images = [Image.new("RGB", (side, side), (200, 40 * i, 30)) for i in range(3)]
    questions = ["What digit is written?", "How many shapes are in the picture, counting all of them?", "Color?"]
    runs = _two_ways(model, processor, images, questions, max_new_tokens=40)
    (kv_results, kv_seen), (re_results, re_seen) = runs[True], runs[False]
    assert all(r.resized and r.turns == 2 for r in re_results)  # the path under test ran
    assert [r.raw for r in kv_results] == [r.raw for r in re_results]
    assert len(kv_seen) == len(re_seen)
    for (n_kv, a), (n_re, b) in zip(kv_seen, re_seen):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    prefills_kv = [n for n, _ in kv_seen if n > 1]
    prefills_re = [n for n, _ in re_seen if n > 1]
    assert prefills_kv[0] == prefills_re[0]  # the first turn is the same call
    assert prefills_kv[1] < prefills_re[1] // 2  # the second turn prefilled only its new tail
    n_full = TokenCounter(get_family(family), processor)(images[0])
    assert prefills_kv[1] > n_full  # ... and that tail holds the full image the tool returned


def test_kv_reuse_equals_reencoding_on_the_default(one_thread):
    """The embedded default (`adaptune.default`), GlyphQA rows: same answers and logits both ways."""
    from adaptune.data import GlyphQAConfig, heldout_mix

    loaded = load_model("default")
    force_protocol(loaded.model, loaded.processor)
    rows = heldout_mix(GlyphQAConfig(seed=0), fine_fraction=0.5, num_images=4)
    try:
        runs = _two_ways(loaded.model, loaded.processor, list(rows["image"]), list(rows["question"]),
                         max_new_tokens=40)
    finally:
        loaded.model.generation_config.sequence_bias = None
    (kv_results, kv_seen), (re_results, re_seen) = runs[True], runs[False]
    assert all(r.resized for r in kv_results) and [r.raw for r in kv_results] == [r.raw for r in re_results]
    for (_, a), (_, b) in zip(kv_seen, re_seen, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_kv_reuse_falls_back_with_a_logged_reason(one_thread, caplog, monkeypatch):
    """A model with budget hooks (token reducers, TokenFLEX) re-encodes, says why, and still answers the same."""
    from adaptune.budget.inputs import add_budget_listener, remove_budget_listener
    from adaptune.budget import prefix_cache
    from adaptune.budget.prefix_cache import unsupported_reason

    monkeypatch.setattr(prefix_cache, "_LOGGED", set())  # each reason is logged once per process
    model, processor = build_tiny("qwen3_vl", seed=1)
    force_protocol(model, processor)
    questions = ["What digit is written?", "Color?"]
    expected = answer_with_resolution_policy(model, processor, IMAGES, questions, max_new_tokens=40, kv_reuse=False)
    add_budget_listener(model, "test", lambda m, call: None)
    try:
        assert "budget hooks" in unsupported_reason(model, {"image_grid_thw": 1, "mm_token_type_ids": 1})
        with caplog.at_level("WARNING", logger="adaptune"):
            got = answer_with_resolution_policy(model, processor, IMAGES, questions, max_new_tokens=40)
    finally:
        remove_budget_listener(model, "test")
    assert "KV reuse off" in caplog.text and "budget hooks" in caplog.text
    assert [r.raw for r in got] == [r.raw for r in expected]


def test_a_template_that_drops_the_tool_turn_is_refused(one_thread):
    """The original Qwen2.5-VL template renders no tool turn (the full image would never reach the model), so the
    two-turn loop refuses it, naming the way out; fixed-resolution baselines need no tool and still run."""
    from adaptune.models import ChatTemplateError

    model, processor = build_tiny("qwen2_5_vl", seed=1)
    images, questions = [Image.new("RGB", (112, 112), (200, 40, 30))], ["What digit is written?"]
    with pytest.raises(ChatTemplateError, match=r"tool_calling=True.*model\.chat_template"):
        answer_with_resolution_policy(model, processor, images, questions, max_new_tokens=4)
    with pytest.raises(ChatTemplateError):
        answer_with_resolution_policy(model, processor, images, questions, resize=[True], max_new_tokens=4)
    assert len(answer_with_resolution_policy(model, processor, images, questions, always="full",
                                             max_new_tokens=4)) == 1
    prepare_chat_template(processor, get_family("qwen2_5_vl"), tool_calling=True)
    assert len(answer_with_resolution_policy(model, processor, images, questions, max_new_tokens=4)) == 1
