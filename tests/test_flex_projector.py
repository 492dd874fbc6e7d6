"""TokenFLEX (`flex_projector`): pooling math, Qwen patch ordering, per-call budgets, generation, load checks, task.

Run: .venv/bin/python -m pytest tests/test_flex_projector.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from PIL import Image

import adaptune  # noqa: F401
from adaptune.methods.flex_projector import (
    BudgetError,
    BudgetSampler,
    FlexProcessor,
    FlexProjectorConfig,
    pool_grid,
    resolve_grid,
)
from adaptune.methods.flex_projector.layer import grid_to_merge_order, merge_order_to_grid, undo_window_order
from adaptune.models import LoadedModel, build_tiny, get_family
from adaptune.models.inputs import example_batch, example_images


def _prompts(processor, n: int, question: str = "what is it") -> list[str]:
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return [processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)] * n


def _flex_model(family: str, **config):
    """A tiny model with TokenFLEX; budgets 4/9/16 unless `config` says (the default 64/144/256 is for real grids)."""
    model, processor = build_tiny(family, seed=0)
    return get_peft_model(model, FlexProjectorConfig(**{"budgets": [4, 9, 16], **config})).eval(), processor


def _flex_batch(family: str, processor, budget, n: int = 2, size: int = 128):
    processor.tokenizer.padding_side = "left"
    images = example_images(n, size)
    if family == "smolvlm":
        images = [[im] for im in images]
    return FlexProcessor(processor)(images=images, text=_prompts(processor, n), budget=budget, return_tensors="pt",
                                    padding=True)


# ------------------------------------------------------------------------------------------------------ the math


@pytest.mark.parametrize("budget,side,factor", [(64, 8, 4), (144, 12, 3), (256, 16, 2)])
def test_pool_sizes_on_27x27_grid_resize_up(budget, side, factor):
    grid = torch.randn(1, 5, 27, 27)
    h, w = resolve_grid(budget, (27, 27))
    assert (h, w) == (side, side)
    pooled = pool_grid(grid, h, w)
    assert pooled.shape == (1, 5, side, side)
    up = torch.nn.functional.interpolate(grid, size=(side * factor, side * factor), mode="bilinear",
                                         align_corners=False)
    torch.testing.assert_close(pooled[0, :, 0, 0], up[0, :, :factor, :factor].mean(dim=(1, 2)))
    constant = pool_grid(torch.full((1, 2, 27, 27), 3.0), h, w)
    torch.testing.assert_close(constant, torch.full_like(constant, 3.0))


def test_pool_exact_multiple_is_plain_average_and_non_square():
    grid = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
    pooled = pool_grid(grid, 2, 4)
    assert pooled.shape == (1, 2, 2, 4)
    assert pooled[0, 0, 1, 3] == grid[0, 0, 4:8, 6:8].mean()


def test_resolve_grid_rule_and_errors():
    assert resolve_grid(8, (4, 4)) == (2, 4)
    assert resolve_grid(8, (8, 4)) == (4, 2)          # follows the image's aspect
    assert resolve_grid((3, 2), (4, 4)) == (3, 2)
    for bad in (7, 0, 17, (5, 1)):
        with pytest.raises(BudgetError, match="grid|at least 1"):
            resolve_grid(bad, (4, 4))


def test_budget_sampler_is_seeded_and_weighted():
    sampler_a, sampler_b = BudgetSampler([4, 9, 16], [2, 3, 5], seed=3), BudgetSampler([4, 9, 16], [2, 3, 5], seed=3)
    a, b = [sampler_a() for _ in range(2000)], [sampler_b() for _ in range(2000)]
    assert a == b
    assert abs(a.count(16) / 2000 - 0.5) < 0.05 and abs(a.count(4) / 2000 - 0.2) < 0.05


# ---------------------------------------------------------------------------------------- Qwen patch ordering


def test_merge_window_order_to_grid_matches_transformers_positions():
    from transformers.vision_utils import get_vision_position_ids

    height, width = 4, 6
    rows_cols = get_vision_position_ids(torch.tensor([[1, height, width]]), 2).float()  # (H*W, 2), Qwen order
    grid = merge_order_to_grid(rows_cols, height, width, 2)
    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    assert torch.equal(grid[0], r.float()) and torch.equal(grid[1], c.float())
    assert torch.equal(grid_to_merge_order(grid, 2), rows_cols)


def test_qwen_processor_patches_land_on_their_image_position():
    """Real processor: each patch's pixels, reordered with merge_order_to_grid, sit where they are in the image."""
    _, processor = build_tiny("qwen3_vl")
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    image = Image.fromarray(colours).resize((6 * 16, 4 * 16), Image.NEAREST)
    out = processor.image_processor(images=[image], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    # a patch row is (channel, temporal, 16, 16) flattened; its mean per channel identifies the block colour
    means = out["pixel_values"].reshape(24, 3, 2, 16, 16).mean(dim=(2, 3, 4))
    grid = merge_order_to_grid(means, 4, 6, 2)  # (3, 4, 6)
    expected = processor.image_processor(images=[Image.fromarray(colours[1:2, 4:5]).resize((32, 32))],
                                         return_tensors="pt")["pixel_values"].reshape(4, 3, 2, 16, 16).mean(
                                             dim=(2, 3, 4))[0]
    torch.testing.assert_close(grid[:, 1, 4], expected, atol=1e-5, rtol=0)
    order = grid.permute(1, 2, 0).reshape(-1, 3)
    assert len({tuple(np.round(v.tolist(), 4)) for v in order}) == 24  # all 24 patches distinct and placed once


def test_qwen2_5_window_order_is_undone():
    from transformers.vision_utils import get_vision_window_index

    grid_thw = torch.tensor([[1, 8, 12]])
    positions = torch.arange(8 * 12, dtype=torch.float32)[:, None]
    window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=2, window_size=56, patch_size=14)
    windowed = positions.reshape(-1, 4, 1)[window_index].reshape(-1, 1)  # what Qwen2.5-VL's blocks see
    assert not torch.equal(windowed, positions)
    assert torch.equal(undo_window_order(windowed, window_index, 4), positions)


# --------------------------------------------------------------------------------------- budgets on real models


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl", "llava", "smolvlm"])
def test_per_call_budget_placeholder_count_forward_and_generate(family):
    model, processor = _flex_model(family)
    size = 32 if family == "llava" else 128
    token_id = FlexProcessor(processor).image_token_id
    for budget in (1, 4):
        batch = _flex_batch(family, processor, budget, size=size)
        assert (batch["input_ids"] == token_id).sum(-1).tolist() == [budget, budget]
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.shape[:2] == batch["input_ids"].shape
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 2
    if family.startswith("qwen"):
        assert batch["image_grid_thw"][:, 1:].tolist() == [[4, 4], [4, 4]]  # pooled 2x2 tokens, merge 2
        assert "vision_grid_thw" in batch


def test_generate_positions_match_a_full_forward():
    """Greedy tokens from generate() equal the argmax of one forward over prompt + generated tokens (M-RoPE from the
    pooled grid in both)."""
    model, processor = _flex_model("qwen3_vl")
    batch = _flex_batch("qwen3_vl", processor, 9, n=1)
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
        full = dict(batch)
        new = generated.shape[1] - batch["input_ids"].shape[1]
        full["input_ids"] = generated
        full["attention_mask"] = torch.ones_like(generated)
        full["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"],
                                               torch.zeros(1, new, dtype=torch.long)], dim=1)
        logits = model(**full).logits
    predicted = logits[0, batch["input_ids"].shape[1] - 1:-1].argmax(-1)
    assert predicted.tolist() == generated[0, batch["input_ids"].shape[1]:].tolist()


def test_impossible_budget_is_a_clear_error():
    model, processor = _flex_model("qwen3_vl")
    with pytest.raises(BudgetError, match="cannot be laid out"):
        _flex_batch("qwen3_vl", processor, 11)  # 11 = 1 x 11 does not fit an 8x8 patch grid
    with pytest.raises(BudgetError, match="8x8"):
        _flex_batch("qwen3_vl", processor, 100)
    llava, llava_processor = _flex_model("llava")
    with pytest.raises(BudgetError):
        _flex_batch("llava", llava_processor, 5, size=32)


def test_disabled_adapter_rejects_flex_inputs_and_default_budget_without_flex_inputs():
    model, processor = _flex_model("qwen3_vl")
    batch = _flex_batch("qwen3_vl", processor, 4)
    with model.disable_adapter(), pytest.raises(ValueError, match="adapter is disabled"):
        model(**batch)
    stock = example_batch(get_family("qwen3_vl"), processor)  # no budget: the family default (H/2 x W/2 tokens)
    with torch.no_grad():
        assert model(**stock).logits.shape[:2] == stock["input_ids"].shape


def test_flex_config_validation():
    with pytest.raises(ValueError, match="budget_weights"):
        FlexProjectorConfig(budgets=[4, 16], budget_weights=[1.0])
    with pytest.raises(ValueError, match="deepstack"):
        FlexProjectorConfig(deepstack="sum")


def test_per_budget_norm_acts_is_validated_and_refuses_an_untrained_budget():
    with pytest.raises(ValueError, match="distinct budgets"):
        FlexProjectorConfig(budgets=[4, 4, 16], per_budget_norm=True)
    with pytest.raises(ValueError, match="per_budget_norm must be true or false"):
        FlexProjectorConfig(per_budget_norm="yes")
    shared, processor = _flex_model("qwen3_vl")
    per_budget, _ = _flex_model("qwen3_vl", per_budget_norm=True)
    per_budget.load_state_dict(shared.state_dict(), strict=False)  # same weights; the per-budget table starts at 0
    projector = per_budget.base_model.model.model.visual.flex_projector["default"]
    assert projector.budget_affine.shape == (3, 2, projector.norm.normalized_shape[0])
    assert not hasattr(shared.base_model.model.model.visual.flex_projector["default"].budget_affine, "shape")
    batches = {b: _flex_batch("qwen3_vl", processor, b) for b in (4, 9)}
    with torch.no_grad():
        for b, batch in batches.items():  # zero-initialised: exactly the shared projector
            torch.testing.assert_close(per_budget(**batch).logits, shared(**batch).logits, rtol=0, atol=0)
        projector.budget_affine[0, 0].fill_(1.0)  # budget 4's scale only
        changed = per_budget(**batches[4]).logits
        assert not torch.allclose(changed, shared(**batches[4]).logits)
        torch.testing.assert_close(per_budget(**batches[9]).logits, shared(**batches[9]).logits, rtol=0, atol=0)
    with pytest.raises(BudgetError, match=r"per-budget normalisation for the budgets \[4, 9, 16\] only, not 1 "
                                          r"\(1 x 1\) tokens: evaluate at a trained budget, or train with that "
                                          r"budget in `budgets`$"):
        with torch.no_grad():
            per_budget(**_flex_batch("qwen3_vl", processor, 1))


@pytest.mark.parametrize("family", ["llava", "smolvlm"])
def test_per_budget_norm_reaches_the_projector_of_a_projector_family(family):
    """LLaVA and SmolVLM replace their multimodal projector (not a Qwen vision tower): the option acts there too."""
    from adaptune.methods.flex_projector import FlexProjector

    model, _ = _flex_model(family, per_budget_norm=True)
    projectors = [m for m in model.modules() if isinstance(m, FlexProjector)]
    assert len(projectors) == 1 and projectors[0].norm_budgets == [4, 9, 16]
    assert projectors[0].budget_affine.shape == (3, 2, projectors[0].norm.normalized_shape[0])


def test_per_budget_affine_is_the_row_of_the_budget_after_the_shared_norm():
    import torch.nn.functional as F

    from adaptune.methods.flex_projector import FlexProjector

    torch.manual_seed(0)
    projector = FlexProjector(4, 5, norm_budgets=[1, 4])
    with torch.no_grad():
        projector.budget_affine.normal_()
    grid = torch.randn(2, 4, 4, 4)
    for row, (h, w) in enumerate([(1, 1), (2, 2)]):
        x = pool_grid(grid, h, w).flatten(2).transpose(1, 2)
        x = projector.norm(x) * (1 + projector.budget_affine[row, 0]) + projector.budget_affine[row, 1]
        expected = projector.down(F.silu(projector.gate(x)) * projector.up(x))
        torch.testing.assert_close(projector(grid, h, w), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="distinct budgets"):
        FlexProjector(4, 5, norm_budgets=[4, 4])
    plain = FlexProjector(4, 5)
    assert plain.budget_affine is None and not any("budget_affine" in k for k in plain.state_dict())


def test_per_budget_norm_saves_and_loads_with_the_adapter(tmp_path):
    model, processor = _flex_model("qwen3_vl", per_budget_norm=True)
    projector = model.base_model.model.model.visual.flex_projector["default"]
    with torch.no_grad():
        projector.budget_affine.normal_()
    batch = _flex_batch("qwen3_vl", processor, 16)
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    base, _ = build_tiny("qwen3_vl")
    reloaded = PeftModel.from_pretrained(base, tmp_path).eval()
    assert reloaded.peft_config["default"].per_budget_norm is True
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=0)


def test_deepstack_zero_mode_and_pool_mode_differ():
    batch_outputs = []
    for mode in ("pool", "zero"):
        model, processor = _flex_model("qwen3_vl", deepstack=mode)
        batch = _flex_batch("qwen3_vl", processor, 4)
        with torch.no_grad():
            batch_outputs.append(model(**batch).logits)
    assert not torch.equal(*batch_outputs)


# -------------------------------------------------------------------------------------------- save / load checks


def test_wrong_base_model_load_says_what_differs(tmp_path):
    model, _ = _flex_model("qwen3_vl")
    model.save_pretrained(tmp_path)
    other_family, _ = build_tiny("llava")
    with pytest.raises(ValueError, match="created on qwen3_vl.*llava.*base_family"):
        PeftModel.from_pretrained(other_family, tmp_path)
    bigger, _ = build_tiny("qwen3_vl", text={"hidden_size": 128, "head_dim": 32, "intermediate_size": 256,
                                             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                                 "mrope_section": [4, 6, 6]}},
                           vision={"out_hidden_size": 128})
    with pytest.raises(ValueError, match="text_hidden_size"):
        PeftModel.from_pretrained(bigger, tmp_path)


def test_reload_under_another_adapter_name_and_unload(tmp_path):
    model, processor = _flex_model("qwen3_vl")
    batch = _flex_batch("qwen3_vl", processor, 9)
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    base, _ = build_tiny("qwen3_vl")
    reloaded = PeftModel.from_pretrained(base, tmp_path, adapter_name="flex").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=0)
    stock = example_batch(get_family("qwen3_vl"), processor)
    fresh, _ = build_tiny("qwen3_vl")
    with torch.no_grad():
        reference = fresh(**stock).logits
    plain = reloaded.unload()
    assert not hasattr(plain.model.visual, "flex_projector") and "generate" not in plain.__dict__
    with torch.no_grad():
        torch.testing.assert_close(plain(**stock).logits, reference, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------ the task


def _vqa_task(task_name: str, dataset_dir, **params):
    from adaptune.registry import TASKS

    model, processor = build_tiny("qwen3_vl")
    loaded = LoadedModel(model=model, processor=processor, family=get_family("qwen3_vl"), source="tiny:qwen3_vl")
    task_cls = TASKS.get(task_name)
    task = task_cls(task_cls.Params(dataset=str(dataset_dir), num_train=8, num_eval=3, answer_format="plain",
                                    max_new_tokens=2, **params), loaded, seed=0)
    return model, task


@pytest.mark.parametrize("task_name", ["flex_vqa", "vqa_sft"])
def test_budget_drawn_per_batch_from_the_adapter_config_on_any_vqa_task(vqa_dataset_dir, task_name):
    """The method's objective samples the budgets of FlexProjectorConfig (the single source) for every VQA task."""
    from adaptune.methods.objective import META_KEY
    from adaptune.train.objectives import bind, training_collator, training_loss

    model, task = _vqa_task(task_name, vqa_dataset_dir)
    peft_model = get_peft_model(model, FlexProjectorConfig(budgets=[1, 4], budget_weights=[1, 1]))
    objective = bind(peft_model, task)
    collate = training_collator(task.collate, objective)
    rows = [task.datasets()["train"][i] for i in range(4)]
    token_id = FlexProcessor(task.loaded.processor).image_token_id
    seen = set()
    for _ in range(6):
        batch = collate(rows)
        budget = batch[META_KEY]["budget"]
        assert set((batch["input_ids"] == token_id).sum(-1).tolist()) == {budget}
        assert (batch["labels"] != -100).any()
        loss, logs = training_loss(peft_model, task, batch, objective)
        loss.backward()
        assert logs["budget"] == budget
        seen.add(budget)
    assert seen == {1, 4}


def test_flex_vqa_evaluates_at_the_adapter_budgets_by_default(vqa_dataset_dir):
    model, task = _vqa_task("flex_vqa", vqa_dataset_dir)
    peft_model = get_peft_model(model, FlexProjectorConfig(budgets=[1, 4], budget_weights=[1, 1]))
    metrics = task.evaluate(peft_model, "validation", limit=2)
    assert metrics["b1/visual_tokens"] == 1 and metrics["b4/visual_tokens"] == 4
    assert {"b1/accuracy", "b4/accuracy", "accuracy", "visual_tokens"} <= set(metrics)
    _, explicit = _vqa_task("flex_vqa", vqa_dataset_dir, eval_budgets=[4])
    assert {k.split("/")[0] for k in explicit.evaluate(peft_model, "validation", limit=1) if "/" in k} == {"b4"}


def test_non_square_image_and_grid_budget_on_qwen():
    model, processor = _flex_model("qwen3_vl")
    processor.tokenizer.padding_side = "left"
    image = example_images(1, 128)[0].resize((128, 64))  # 128 wide, 64 high: a 4 x 8 patch grid
    flex = FlexProcessor(processor)
    for budget, grid in ((8, [1, 4, 8]), ((1, 4), [1, 2, 8])):
        batch = flex(images=[image], text=_prompts(processor, 1), budget=budget, return_tensors="pt", padding=True)
        assert batch["vision_grid_thw"].tolist() == [[1, 4, 8]]
        assert batch["image_grid_thw"].tolist() == [grid]
        with torch.no_grad():
            assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]
