"""R-AMT mask tuning: straight-through math, initial masks, gradient dropout, bit packing, merge, save/load, base check,
and the method's objective applied by the trainer on CLIP classification, Qwen3-VL VQA and CLIPSeg segmentation.

Fast (tiny models built in code); the shared matrix (tests/test_method_matrix.py) covers the generic adapter contract.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from adaptune.methods.mask_tuning import (
    MaskTuningConfig, MaskTuningLayer, gradient_dropout, keep_probability, mask_tuning_objective, masked_share,
    pack_bits, plot_masked_share, unpack_bits,
)
from adaptune.models import build_tiny, get_family
from adaptune.models.inputs import example_batch, main_output



@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads stall each other (100x slower backward)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

def _adapted(family: str = "clip", **config):
    model, processor = build_tiny(family, seed=0)
    spec = get_family(family)
    return get_peft_model(model, MaskTuningConfig(**config)), spec, example_batch(spec, processor)


def _zero_some_scores(peft_model, fraction: float = 0.2, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, MaskTuningLayer):
                scores = module.amt_scores["default"]
                scores[torch.rand(scores.shape, generator=gen) < fraction] = -0.01


def test_masks_start_all_ones_and_output_unchanged():
    model, processor = build_tiny("clip", seed=0)
    spec = get_family("clip")
    batch = example_batch(spec, processor)
    with torch.no_grad():
        base = main_output(spec, model(**batch)).clone()
    peft_model = get_peft_model(model, MaskTuningConfig())
    layers = [m for m in peft_model.modules() if isinstance(m, MaskTuningLayer)]
    assert layers and all(bool(layer.mask("default").eq(1).all()) for layer in layers)
    assert all(bool(layer.amt_scores["default"].eq(0.01).all()) for layer in layers)
    with torch.no_grad():
        assert torch.equal(main_output(spec, peft_model(**batch)), base)


def test_default_targets_are_vision_attention_and_patch_embedding():
    peft_model, _, _ = _adapted("clip")
    names = peft_model.base_model.targeted_module_names
    assert "vision_model.embeddings.patch_embedding" in names
    assert all(n.startswith("vision_model.") for n in names)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"patch_embedding", "q_proj", "k_proj", "v_proj", "out_proj"}
    qwen, _, _ = _adapted("qwen3_vl")  # fused qkv + Conv3d patch embedding
    assert {n.rsplit(".", 1)[-1] for n in qwen.base_model.targeted_module_names} == {"proj", "qkv"}


def test_straight_through_gradient_is_grad_wrt_effective_weight_times_weight():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)
    layer = MaskTuningLayer(linear, "default")
    with torch.no_grad():
        layer.amt_scores["default"][0, 1] = 0.0  # this weight is masked out
    x, g = torch.randn(4, 5), torch.randn(4, 3)
    y = layer(x)
    w_eff = linear.weight * layer.mask("default").detach()
    torch.testing.assert_close(y, x @ w_eff.T + linear.bias)
    (y * g).sum().backward()
    expected = (g.T @ x) * linear.weight.detach()  # dL/dW_eff * W: the mask's gradient, passed straight through
    torch.testing.assert_close(layer.amt_scores["default"].grad, expected)


def test_conv_masking_matches_manual_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = MaskTuningLayer(conv, "default")
    with torch.no_grad():
        layer.amt_scores["default"][:, 0] = -1.0
    x = torch.randn(2, 3, 8, 8)
    expected = nn.functional.conv2d(x, conv.weight * (layer.amt_scores["default"] > 0.005), conv.bias, padding=1)
    torch.testing.assert_close(layer(x), expected)


def test_keep_probability_on_hand_made_gradients():
    a = torch.tensor([1.0, -2.0, 1.0, 1.0, 0.0, -1.0])
    b = torch.tensor([3.0, -0.5, -3.0, -1.0, 2.0, 4.0])
    # agree -> 1; agree -> 1; a=1,b=-3 -> (1 + (-2)/4)/2 = 0.25; a=1,b=-1 -> 0.5; a=0 -> 0.5; a=-1,b=4 -> (1-3/5)/2=0.2
    torch.testing.assert_close(keep_probability(a, b), torch.tensor([1.0, 1.0, 0.25, 0.5, 0.5, 0.2]))
    assert torch.isfinite(keep_probability(torch.zeros(3), torch.zeros(3))).all()


def test_gradient_dropout_agreeing_signs_always_kept_and_lambda_zero_is_plain():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(10_000, generator=gen)
    b = a.sign() * torch.rand(10_000, generator=gen)  # same sign as a
    gated, keep = gradient_dropout(a, b, lam=1.0, generator=gen)
    assert bool(keep.all()) and torch.equal(gated, a)
    opposite = -a.sign() * 10 * a.abs()  # strongly disagreeing: P = (1 - 9/11) / 2 ~ 0.09
    gated, keep = gradient_dropout(a, opposite, lam=1.0, generator=gen)
    assert 0.05 < keep.float().mean() < 0.13
    assert torch.equal(gradient_dropout(a, opposite, lam=0.0, generator=gen)[0], a)
    half, _ = gradient_dropout(a, opposite, lam=0.3, generator=gen)  # dropped entries keep 70% of a
    ratios = torch.unique((half / a).round(decimals=4))
    assert torch.allclose(ratios, torch.tensor([0.7, 1.0]))


def _clip_objective_grads(lam: float, dropout: bool = True):
    from adaptune.tasks.fewshot_clip import clip_logits, prompt_embeddings

    peft_model, _, batch = _adapted("clip", gradient_dropout=dropout, gradient_dropout_lambda=lam)
    _zero_some_scores(peft_model, 0.1)
    model_text = prompt_embeddings(peft_model, build_tiny("clip")[1].tokenizer, ["a red circle", "a blue square"])
    labels = torch.tensor([0, 1])
    logits = clip_logits(peft_model, batch["pixel_values"], model_text)
    with torch.no_grad(), peft_model.disable_adapter():
        reference = clip_logits(peft_model, batch["pixel_values"], model_text)
    ce = nn.functional.cross_entropy(logits, labels)
    loss, logs = mask_tuning_objective(peft_model, ce, logits=logits, reference_logits=reference,
                                       generator=torch.Generator().manual_seed(0))
    scores = [p for n, p in peft_model.named_parameters() if p.requires_grad]
    loss.backward()
    return peft_model, ce, loss, logs, [s.grad.clone() for s in scores], scores


def test_objective_value_and_lambda_zero_gradient_equal_plain_loss():
    _, ce, loss, logs, grads, scores = _clip_objective_grads(lam=0.0)
    reg = 1e-4 * sum(s.detach().norm() for s in scores)
    assert float(loss.detach()) == pytest.approx(float(ce.detach() + reg), rel=1e-6)
    assert "gd_keep_rate" in logs and "kl_to_frozen" in logs
    _, _, _, plain_logs, plain, _ = _clip_objective_grads(lam=0.0, dropout=False)  # ce + reg, ordinary backward
    assert "gd_keep_rate" not in plain_logs
    for got, want in zip(grads, plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


def test_objective_with_full_dropout_only_keeps_or_zeroes_task_gradient():
    _, _, _, logs, grads, scores = _clip_objective_grads(lam=1.0)
    _, _, _, _, plain, _ = _clip_objective_grads(lam=0.0)
    assert 0.0 < logs["gd_keep_rate"] <= 1.0
    for got, ref, score in zip(grads, plain, scores):
        reg = 1e-4 * score.detach() / score.detach().norm()
        task_got, task_ref = got - reg, ref - reg
        close_to_ref = torch.isclose(task_got, task_ref, rtol=1e-4, atol=1e-9)
        zero = task_got.abs() <= 1e-9
        assert bool((close_to_ref | zero).all())


@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 3, 2, 2), (16,)])
def test_bit_pack_round_trip_matches_numpy(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    np.testing.assert_array_equal(packed.numpy(), np.packbits(mask.numpy().reshape(-1)))
    assert torch.equal(unpack_bits(packed, shape), mask)


def test_merged_equals_adapted_exactly_and_masks_are_baked_in():
    for family in ("clip", "qwen3_vl"):
        peft_model, spec, batch = _adapted(family)
        _zero_some_scores(peft_model, 0.3)
        peft_model.eval()
        with torch.no_grad():
            adapted = main_output(spec, peft_model(**batch)).clone()
        merged = peft_model.merge_and_unload()
        assert not any(isinstance(m, MaskTuningLayer) for m in merged.modules())
        with torch.no_grad():
            assert torch.equal(main_output(spec, merged(**batch)), adapted)
    weight = merged.model.visual.blocks[0].attn.qkv.weight
    assert float((weight == 0).float().mean()) > 0.2


def test_adapter_files_hold_packed_masks_and_scores(tmp_path):
    peft_model, spec, batch = _adapted("clip")
    _zero_some_scores(peft_model, 0.25)
    peft_model.eval()
    with torch.no_grad():
        adapted = main_output(spec, peft_model(**batch)).clone()
    peft_model.save_pretrained(tmp_path / "full")
    peft_model.peft_config["default"].save_scores = False
    peft_model.save_pretrained(tmp_path / "masks")
    full = load_file(tmp_path / "full" / "adapter_model.safetensors")
    masks_only = load_file(tmp_path / "masks" / "adapter_model.safetensors")
    assert {v.dtype for v in masks_only.values()} == {torch.uint8}
    assert any(k.endswith("amt_scores") for k in full) and any(k.endswith("amt_mask_bits") for k in full)
    layer = peft_model.base_model.model.vision_model.encoder.layers[0].self_attn.q_proj
    key = "base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.amt_mask_bits"
    assert torch.equal(unpack_bits(full[key], layer.weight.shape), layer.amt_scores["default"] > 0.005)
    for folder in ("full", "masks"):
        reloaded = PeftModel.from_pretrained(build_tiny("clip", seed=0)[0], tmp_path / folder).eval()
        with torch.no_grad():
            assert torch.equal(main_output(spec, reloaded(**batch)), adapted)
    config = json.loads((tmp_path / "full" / "adapter_config.json").read_text())
    assert config["base_family"] == "clip" and config["target_shapes"]


def test_corrupted_mask_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    peft_model, _, _ = _adapted("clip")
    peft_model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "adapter_model.safetensors")
    key = next(k for k in state if k.endswith("amt_mask_bits"))
    state[key] = torch.zeros_like(state[key])
    save_file(state, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="disagree"):
        PeftModel.from_pretrained(build_tiny("clip", seed=0)[0], tmp_path)


def test_wrong_base_model_says_what_differs(tmp_path):
    peft_model, _, _ = _adapted("clip")
    peft_model.save_pretrained(tmp_path)
    wider, _ = build_tiny("clip", seed=0, vision={"hidden_size": 48, "intermediate_size": 96})
    with pytest.raises(ValueError, match=r"weight shape \(48, 48\) here, \(32, 32\) in the adapter"):
        PeftModel.from_pretrained(wider, tmp_path)
    siglip, _ = build_tiny("siglip", seed=0)
    with pytest.raises(ValueError, match="made for 'clip', this model is 'siglip'"):
        PeftModel.from_pretrained(siglip, tmp_path)


def test_siglip_and_dinov2_are_supported():
    for family in ("siglip", "dinov2"):
        peft_model, spec, batch = _adapted(family)
        _zero_some_scores(peft_model, 0.2)
        peft_model.eval()
        with torch.no_grad():
            adapted = main_output(spec, peft_model(**batch)).clone()
            merged = peft_model.merge_and_unload()
            torch.testing.assert_close(main_output(spec, merged(**batch)), adapted, rtol=1e-5, atol=1e-6)


def test_any_linear_or_conv_is_targetable_and_others_are_refused():
    peft_model, _, _ = _adapted("clip", target_modules=r"vision_model\.encoder\.layers\.0\.mlp\.fc1")
    assert peft_model.base_model.targeted_module_names == ["vision_model.encoder.layers.0.mlp.fc1"]
    with pytest.raises(TypeError, match="only nn.Linear and nn.Conv1d/2d/3d"):
        _adapted("clip", target_modules=r"vision_model\.post_layernorm")


def test_config_validation():
    with pytest.raises(ValueError, match="threshold"):
        MaskTuningConfig(init_score=0.001, threshold=0.005)
    with pytest.raises(ValueError, match="gradient_dropout_lambda"):
        MaskTuningConfig(gradient_dropout_lambda=1.5)


def test_masked_share_rows_and_plot(tmp_path):
    peft_model, _, _ = _adapted("clip")
    _zero_some_scores(peft_model, 0.5)
    rows = masked_share(peft_model)
    assert rows[-1]["module"] == "all" and 0.4 < rows[-1]["share"] < 0.6
    assert rows[0]["module"].startswith("vision_model.")
    assert plot_masked_share(rows, tmp_path / "share.png").stat().st_size > 1000


def test_fewshot_task_trains_with_gradient_dropout_inside_the_hf_trainer(tmp_path):
    """The integration the recipe trainer uses: `TaskTrainer.compute_loss` -> `task.loss` (CE, logits, reference) ->
    the method's R-AMT objective (`adaptune.train.objectives`)."""
    from transformers import TrainingArguments

    from adaptune.models import LoadedModel
    from adaptune.tasks.fewshot_clip import FewShotCLIPTask, FewShotParams
    from adaptune.train.runner import TaskTrainer

    model, processor = build_tiny("clip", seed=0)
    task = FewShotCLIPTask(FewShotParams(shots=1, validation_per_class=1, test_per_class=1),
                           LoadedModel(model, processor, get_family("clip"), "tiny:clip"))
    peft_model = get_peft_model(model, MaskTuningConfig(gradient_dropout=True))
    base_before = {k: v.clone() for k, v in peft_model.get_base_model().state_dict().items() if "amt_" not in k}
    scores_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    task.on_train_begin(peft_model)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=6, learning_rate=5e-3,
                             use_cpu=True, report_to=[], remove_unused_columns=False, save_strategy="no",
                             logging_steps=1, disable_tqdm=True)
    trainer = TaskTrainer(task=task, model=peft_model, args=args, train_dataset=task.datasets()["train"],
                          data_collator=task.collate)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "gd_keep_rate" in entry]
    assert logged and 0 < logged[-1]["gd_keep_rate"] <= 1
    assert any(not torch.equal(p, scores_before[n]) for n, p in peft_model.named_parameters() if n in scores_before)
    base_after = peft_model.get_base_model().state_dict()
    assert all(torch.equal(base_after[k], v) for k, v in base_before.items() if k in base_after)
    metrics = task.evaluate(peft_model, "test")
    assert set(metrics) == {"accuracy", "n", "masked_share"}


def _score_grads(model, loss):
    scores = [p for p in model.parameters() if p.requires_grad]
    return scores, torch.autograd.grad(loss, scores, retain_graph=True)


def test_qwen3_vl_vqa_trainer_applies_the_r_amt_gradient_exactly(vqa_dataset_dir, tmp_path):
    """On a VLM task (vqa_sft, tiny Qwen3-VL) the trainer applies R-AMT: the gradient it leaves on the scores is
    score-L2 gradient + gated task gradient, with the gate drawn from the KL between the frozen and the current
    next-token distributions at the answer positions. Dropping the objective from the trainer fails this test."""
    from transformers import TrainingArguments

    from adaptune.methods.mask_tuning import kl_to_reference
    from adaptune.models import LoadedModel
    from adaptune.tasks.vqa import VQAParams, VQATask
    from adaptune.train.runner import TaskTrainer

    model, processor = build_tiny("qwen3_vl", seed=0)
    task = VQATask(VQAParams(dataset=str(vqa_dataset_dir), num_train=8, num_eval=2, answer_format="plain",
                             max_new_tokens=2), LoadedModel(model, processor, get_family("qwen3_vl"), "tiny:qwen3_vl"))
    peft_model = get_peft_model(model, MaskTuningConfig(gradient_dropout=True, gradient_dropout_lambda=1.0))
    _zero_some_scores(peft_model, 0.1)  # the adapted model now differs from the frozen one: KL > 0
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                             use_cpu=True, report_to=[], remove_unused_columns=False, save_strategy="no",
                             logging_steps=1, disable_tqdm=True)
    trainer = TaskTrainer(task=task, model=peft_model, args=args, train_dataset=task.datasets()["train"],
                          data_collator=task.collate)
    batch = trainer.data_collator([task.datasets()["train"][i] for i in range(4)])

    # the R-AMT rule, computed here from the task's own output: a = task gradient, b = KL gradient
    out = task.loss(peft_model, batch)
    assert out.logits.shape[0] == int((batch["labels"] != -100).sum())  # one row per answer token
    scores, a = _score_grads(peft_model, out.loss)
    with torch.no_grad(), peft_model.disable_adapter():
        reference = out.reference()
    _, b = _score_grads(peft_model, kl_to_reference(out.logits, reference))
    gen = torch.Generator().manual_seed(task.seed)  # the objective's draws: seeded with the run's seed
    expected = [gradient_dropout(ai, bi, 1.0, generator=gen)[0] + 1e-4 * s.detach() / s.detach().norm()
                for ai, bi, s in zip(a, b, scores)]

    loss = trainer.compute_loss(peft_model, batch)  # the first draw of the trainer's objective
    applied = torch.autograd.grad(loss, scores)
    for got, want, plain in zip(applied, expected, a):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-10)
    dropped = sum(int(((g - w).abs() > 0).sum()) for g, w in zip(applied, a))
    assert dropped > 0, "no element was gated: the applied gradient equals the plain task gradient"
    assert float(loss.detach()) == pytest.approx(float(out.loss.detach()) + 1e-4 * float(
        sum(s.detach().norm() for s in scores)), rel=1e-5)

    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "gd_keep_rate" in entry]
    assert logged and all("score_l2" in entry and 0 < entry["gd_keep_rate"] < 1 for entry in logged)


def test_segmentation_gradient_dropout_uses_per_pixel_bernoulli_kl():
    from adaptune.methods.mask_tuning import kl_to_reference
    from adaptune.models import LoadedModel
    from adaptune.tasks.segmentation import SegmentationParams, SegmentationTask
    from adaptune.train.objectives import bind, training_loss

    model, processor = build_tiny("clipseg", seed=0)
    task = SegmentationTask(SegmentationParams(num_train=2, train_offset=0, num_eval=2),
                            LoadedModel(model, processor, get_family("clipseg"), "tiny:clipseg"))
    peft_model = get_peft_model(model, MaskTuningConfig())
    _zero_some_scores(peft_model, 0.1)
    batch = task.collate([task.datasets()["train"][i] for i in range(2)])
    out = task.loss(peft_model, batch)
    with torch.no_grad(), peft_model.disable_adapter():
        reference = out.reference()
    p, q = torch.sigmoid(out.logits[:, 1]), torch.sigmoid(reference[:, 1])
    bernoulli_kl = (q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()).mean()
    torch.testing.assert_close(kl_to_reference(out.logits, reference), bernoulli_kl, rtol=1e-4, atol=1e-7)
    loss, logs = training_loss(peft_model, task, batch, bind(peft_model, task))
    loss.backward()
    assert {"score_l2", "gd_keep_rate", "kl_to_frozen", "dice_loss", "bce"} <= set(logs)
    assert logs["kl_to_frozen"] > 0
