"""Training-free token reducers (`adaptune.budget.reducers`): hand-computed selections and merges, exact attention
scores, identity at K = n on every supported family, per-call budgets with generate, deepstack, refused models.

Every registered reducer goes through the parametrised tests (timm-style), so a new one is tested on registration.

Run: .venv/bin/python -m pytest tests/test_reducers.py -q
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import adaptune  # noqa: F401
from adaptune.budget import BudgetError, BudgetProcessor, apply_reducer, reduce_tokens
from adaptune.budget.inputs import budget_listeners
from adaptune.budget.reducers import REDUCERS, Reduction, bipartite_merge_groups, get_reducer, max_min_diverse
from adaptune.models import UnsupportedModelError, build_tiny
from adaptune.models.inputs import example_images

NAMES = REDUCERS.names()
FAMILIES = ("qwen3_vl", "qwen2_5_vl", "llava")


def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def _batch(family: str, processor, budget, n: int = 2) -> dict:
    processor.tokenizer.padding_side = "left"
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it"}]}]
    text = [processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)] * n
    size = 32 if family == "llava" else 128
    return dict(BudgetProcessor(processor)(images=example_images(n, size), text=text, budget=budget,
                                           return_tensors="pt", padding=True))


@pytest.fixture(scope="module")
def tiny():
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny(family, seed=0)
        return cache[family]
    return get


# ------------------------------------------------------------------------------------------ hand-computed algorithms


def test_divprune_hand_computed_max_min_order():
    # angles 0, 20, 90, 100, 180, 270 degrees; cosine distance grows with the angle between two tokens.
    # nearest-neighbour gaps: 20, 20, 10, 10, 80, 90 -> first pick 5 (270 deg).
    # gaps to {270}: 90, 110, 180, 170, 90 -> pick 2 (90 deg).
    # gaps to {270, 90}: 0 deg -> 90, 20 -> 70, 100 -> 10, 180 -> 90: exact tie (distance 1.0) -> lower index 0.
    # gaps to {270, 90, 0}: 20 -> 20, 100 -> 10, 180 -> 90 -> pick 4; then 20 (gap 20) beats 100 (gap 10) -> pick 1.
    tokens = torch.tensor([[1.0, 0.0], _unit(20), [0.0, 1.0], _unit(100), [-1.0, 0.0], [0.0, -1.0]])
    from adaptune.budget.reducers.base import cosine_similarity_matrix

    assert max_min_diverse(1 - cosine_similarity_matrix(tokens), 6).tolist() == [5, 2, 0, 4, 1, 3]
    divprune = get_reducer("divprune")
    expected = {1: [5], 2: [2, 5], 3: [0, 2, 5], 4: [0, 2, 4, 5], 5: [0, 1, 2, 4, 5], 6: [0, 1, 2, 3, 4, 5]}
    for k, keep in expected.items():
        reduction = divprune(tokens * torch.arange(1, 7)[:, None], k)  # lengths do not matter, only directions
        assert reduction.keep.tolist() == keep
        assert torch.equal(reduction.apply(tokens), tokens[keep])


def test_fastervlm_hand_computed_top_k_with_ties():
    tokens = torch.randn(5, 3)
    fastervlm = get_reducer("fastervlm")
    scores = torch.tensor([0.1, 0.5, 0.3, 0.5, 0.2])
    assert fastervlm(tokens, 1, scores).keep.tolist() == [1]          # tie 0.5 / 0.5 -> lower index
    assert fastervlm(tokens, 2, scores).keep.tolist() == [1, 3]
    assert fastervlm(tokens, 3, scores).keep.tolist() == [1, 2, 3]    # raster order, not score order
    assert fastervlm(tokens, 2, torch.tensor([0.2, 0.4, 0.4, 0.4, 0.1])).keep.tolist() == [1, 2]
    with pytest.raises(ValueError, match="attention score"):
        fastervlm(tokens, 2)


def test_tome_hand_computed_rounds_and_size_weighted_means():
    # t0 0deg, t1 45deg, t2 90deg, t3 135deg, t4 180deg, t5 0deg (3x longer than t0).
    # A = t0, t2, t4; B = t1, t3, t5. Best matches: t0 -> t5 (cos 1), t2 -> t1 (cos .707, tie with t3 -> lower B),
    # t4 -> t3 (cos .707).
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 1.0], [-1.0, 0.0], [3.0, 0.0]])
    tome = get_reducer("tome")
    # K = 4: r = 2 -> t0 (cos 1) and t2 (.707, tie with t4 -> lower A) merge: [t1+t2, t3, t4, t0+t5].
    four = tome(t, 4)
    assert four.assign.tolist() == [3, 0, 0, 1, 2, 3]
    assert torch.equal(four.apply(t), torch.tensor([[0.5, 1.0], [-1.0, 1.0], [-1.0, 0.0], [2.0, 0.0]]))
    # K = 2: round 1 r = min(4, 3) = 3 -> [t1+t2, t3+t4, t0+t5] = [(.5, 1), (-1, .5), (2, 0)];
    # round 2: A = (.5, 1), (2, 0); B = (-1, .5); r = 1: cos 0 beats cos -.89 -> (.5, 1) joins (-1, .5).
    two = tome(t, 2)
    assert two.assign.tolist() == [1, 0, 0, 0, 0, 1]
    torch.testing.assert_close(two.apply(t), torch.tensor([[-0.25, 0.75], [2.0, 0.0]]))
    # the same rounds one at a time: from [t1+t2, t3, t4, t0+t5] (sizes 2, 1, 1, 2) down to 2 tokens:
    # A = (.5, 1), (-1, 0); B = (-1, 1), (2, 0): (.5, 1) -> (2, 0), (-1, 0) -> (-1, 1); sizes weight the means.
    assert bipartite_merge_groups(t, 4).tolist() == [3, 0, 0, 1, 2, 3]
    one = tome(t, 1)
    assert one.assign.tolist() == [0] * 6
    torch.testing.assert_close(one.apply(t), t.mean(0, keepdim=True))


def test_tome_size_weighting_equals_group_mean():
    torch.manual_seed(0)
    tokens = torch.randn(16, 8)
    for k in (1, 3, 7, 12):
        reduction = get_reducer("tome")(tokens, k)
        merged = reduction.apply(tokens)
        for g in range(k):
            torch.testing.assert_close(merged[g], tokens[reduction.assign == g].mean(0))


# ------------------------------------------------------------------------------- every registered reducer (pure)


@pytest.mark.parametrize("name", NAMES)
def test_registered_reducer_contract(name):
    reducer = get_reducer(name)
    assert reducer.name == name and reducer.description and set(reducer.families) >= {"qwen3_vl", "llava"}
    torch.manual_seed(1)
    tokens, scores = torch.randn(16, 8), torch.rand(16)
    identity = reducer(tokens, 16, scores)
    assert torch.equal(identity.apply(tokens), tokens)
    for k in range(1, 17):
        reduction = reducer(tokens, k, scores)
        assert isinstance(reduction, Reduction) and reduction.size == k
        assert reduction.apply(tokens).shape == (k, 8)
        if reduction.keep is not None:
            assert torch.equal(reduction.keep, torch.sort(torch.unique(reduction.keep)).values)  # raster, distinct
        else:
            assert set(reduction.assign.tolist()) == set(range(k))
    for bad in (0, 17, 2.0):
        with pytest.raises(BudgetError, match="budget"):
            reducer(tokens, bad, scores)


# ------------------------------------------------------------------------------------------------ exact attention


def test_qwen_attention_scores_match_the_models_own_attention_weights(monkeypatch):
    """The Qwen stand-in equals the eager attention weights of the last vision block: mean over heads, summed over
    the queries of the image / its patch count, summed over each 2x2 merge group."""
    model, processor = build_tiny("qwen3_vl", seed=0)
    module = importlib.import_module(type(model.model.visual.blocks[-1].attn).__module__)
    model.config.vision_config._attn_implementation = "eager"
    recorded = []
    original = module.eager_attention_forward

    def record(attn, *args, **kwargs):
        out, weights = original(attn, *args, **kwargs)
        recorded.append((attn, weights))
        return out, weights

    monkeypatch.setattr(module, "eager_attention_forward", record)
    with torch.no_grad(), apply_reducer(model, "fastervlm") as handle:
        model(**_batch("qwen3_vl", processor, 4))
    last = [w for attn, w in recorded if attn is model.model.visual.blocks[-1].attn]
    assert len(last) == 2 and len(handle.last_scores) == 2  # one attention segment per image
    for weights, scores in zip(last, handle.last_scores):
        patches = weights.shape[-1]
        expected = weights[0].float().mean(0).sum(0).reshape(-1, 4).sum(1) / patches
        torch.testing.assert_close(scores, expected, atol=1e-6, rtol=1e-5)
    for reduction, scores in zip(handle.last_reductions, handle.last_scores):
        assert reduction.keep.tolist() == sorted(torch.sort(scores, descending=True, stable=True).indices[:4].tolist())


def test_llava_cls_attention_matches_output_attentions():
    for layer in (-1, -2):
        model, processor = build_tiny("llava", seed=0)
        model.config.vision_feature_layer = layer
        batch = _batch("llava", processor, 4)
        with torch.no_grad(), apply_reducer(model, "fastervlm") as handle:
            model(**batch)
        model.config.vision_config._attn_implementation = "eager"
        with torch.no_grad():
            out = model.model.vision_tower(batch["pixel_values"], output_attentions=True)
        expected = out.attentions[layer][:, :, 0, 1:].mean(1)  # the block whose output is hidden_states[layer]
        torch.testing.assert_close(torch.stack(handle.last_scores), expected, atol=1e-6, rtol=1e-5)
        for reduction, row in zip(handle.last_reductions, expected):
            assert reduction.keep.tolist() == sorted(torch.sort(row, descending=True, stable=True).indices[:4].tolist())


# --------------------------------------------------------------------------------------------------- on models


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", NAMES)
def test_full_budget_is_exactly_the_base_model(tiny, family, name):
    model, processor = tiny(family)
    stock = _batch(family, processor, None)
    n = int((stock["input_ids"][0] == BudgetProcessor(processor).image_token_id).sum())
    with torch.no_grad():
        base = model(**stock).logits
        with apply_reducer(model, name) as handle:
            reduced = model(**_batch(family, processor, n)).logits
    assert torch.equal(reduced, base)
    assert [r.size for r in handle.last_reductions] == [n, n]
    assert not budget_listeners(model) and "generate" not in model.__dict__ and not model._forward_pre_hooks


@pytest.mark.parametrize("name", NAMES)
def test_budgets_forward_and_generate_on_qwen3_vl(tiny, name):
    model, processor = tiny("qwen3_vl")
    token_id = BudgetProcessor(processor).image_token_id
    handle = reduce_tokens(model, name)
    try:
        for budget in (1, 4, 9):
            batch = _batch("qwen3_vl", processor, budget)
            assert (batch["input_ids"] == token_id).sum(-1).tolist() == [budget, budget]
            with torch.no_grad():
                logits = model(**batch).logits
                out = model.generate(**batch, max_new_tokens=3, do_sample=False)
            assert torch.isfinite(logits).all() and out.shape[1] == batch["input_ids"].shape[1] + 3
            assert [r.size for r in handle.last_reductions] == [budget, budget]
            assert all(r.n == 16 for r in handle.last_reductions)
    finally:
        handle.remove()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_budgets_generate_on_other_families(tiny, family):
    model, processor = tiny(family)
    for name in NAMES:
        with torch.no_grad(), apply_reducer(model, name) as handle:
            batch = _batch(family, processor, 4)
            model.generate(**batch, max_new_tokens=2, do_sample=False)
        assert [r.size for r in handle.last_reductions] == [4, 4]


@pytest.mark.parametrize("name", NAMES)
def test_deepstack_is_reduced_like_the_main_tokens(tiny, name):
    model, processor = tiny("qwen3_vl")
    batch = _batch("qwen3_vl", processor, 9)
    seen: dict = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)

    lm = model.model.language_model
    handle = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad(), apply_reducer(model, name) as reducer:
            model(**batch)
    finally:
        handle.remove()
    with torch.no_grad():  # the unreduced features of the same images, on their real grid
        full = model.model.get_image_features(batch["pixel_values"], batch["vision_grid_thw"])
    expected = torch.cat([r.apply(t) for r, t in zip(reducer.last_reductions, full.pooler_output)])
    torch.testing.assert_close(seen["inputs_embeds"][seen["visual_pos_masks"]], expected, atol=1e-6, rtol=0)
    assert len(seen["deepstack_visual_embeds"]) == len(full.deepstack_features) == 1
    for level, per_image in zip(seen["deepstack_visual_embeds"], full.deepstack_features):
        expected = torch.cat([r.apply(t) for r, t in zip(reducer.last_reductions, per_image)])
        torch.testing.assert_close(level, expected, atol=1e-6, rtol=0)


def test_budget_above_the_token_count_is_a_clear_error(tiny):
    model, processor = tiny("qwen3_vl")
    batch = _batch("qwen3_vl", processor, 64)  # fits the 8x8 patch grid (TokenFLEX), but only 16 tokens exist
    with apply_reducer(model, "divprune"), pytest.raises(BudgetError, match="16 visual tokens"):
        model(**batch)
    batch = _batch("qwen3_vl", processor, 4)
    batch.pop("vision_grid_thw")  # the compact grid alone cannot describe the patches
    with apply_reducer(model, "divprune"), pytest.raises(ValueError, match="vision_grid_thw"):
        model(**batch)


def test_refused_models_and_one_budget_method_at_a_time(tiny):
    for family in ("smolvlm", "clip"):
        model, _ = tiny(family)
        with pytest.raises(UnsupportedModelError, match="qwen3_vl, qwen2_5_vl, llava"):
            reduce_tokens(model, "divprune")
    model, _ = tiny("qwen3_vl")
    with apply_reducer(model, "tome"), pytest.raises(ValueError, match="one budget method at a time"):
        reduce_tokens(model, "divprune")
    with pytest.raises(KeyError, match="divprune"):
        reduce_tokens(model, "nope")
    llava, _ = build_tiny("llava", seed=0)
    llava.config.vision_feature_select_strategy = "full"
    with pytest.raises(ValueError, match="vision_feature_select_strategy='default'"):
        reduce_tokens(llava, "divprune")
    llava.config.vision_feature_select_strategy, llava.config.vision_feature_layer = "default", [-2, -1]
    with pytest.raises(ValueError, match="one vision_feature_layer"):
        reduce_tokens(llava, "fastervlm")
    assert not llava.model.multi_modal_projector._forward_hooks and not budget_listeners(llava)  # nothing left over
    from peft import get_peft_model

    from adaptune.methods.flex_projector import FlexProjectorConfig

    flex = get_peft_model(build_tiny("qwen3_vl", seed=0)[0], FlexProjectorConfig(budgets=[4, 9, 16]))
    with pytest.raises(ValueError, match="flex_projector"):
        reduce_tokens(flex, "divprune")


def test_reducer_on_a_peft_model_and_listed_by_info():
    from peft import LoraConfig, get_peft_model

    from adaptune.cli import _registries

    model, processor = build_tiny("qwen3_vl", seed=0)
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).eval()
    with torch.no_grad(), apply_reducer(lora, "divprune") as handle:
        lora.generate(**_batch("qwen3_vl", processor, 4), max_new_tokens=2, do_sample=False)
    assert [r.size for r in handle.last_reductions] == [4, 4]
    info = _registries()["token_reducers"]
    assert set(info) == set(NAMES)
    assert "stand-in" in info["fastervlm"]["description"] and info["tome"]["families"] == list(FAMILIES)
