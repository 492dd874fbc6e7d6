"""VLSM adapters for CLIPSeg: placement and shapes, exact disable / reload, gradients through the no-grad encoders,
merge refusal, base-model check; Dice / IoU and the segmentation task on hand-made data."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft import PeftModel, get_peft_model

from adaptune.methods.seg_adapter import (
    Bottleneck, ConditioningAdapterLayer, InputAdapterLayer, OutputAdapterLayer, SegAdapterConfig, clipseg_forward,
)
from adaptune.models import build_tiny, get_family
from adaptune.models.inputs import example_batch
from adaptune.tasks.segmentation import dice_iou, segmentation_loss, soft_dice_loss

SPEC = get_family("clipseg")



@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads stall each other (100x slower backward)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

def _setup(**config):
    model, processor = build_tiny("clipseg", seed=0)
    batch = example_batch(SPEC, processor)
    with torch.no_grad():
        base = model(**batch).logits.clone()
    return get_peft_model(model, SegAdapterConfig(**config)), batch, base


def _layers(model, cls):
    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if type(m) is cls}


def test_bottleneck_shape_and_relu_output():
    block = Bottleneck(32, 4, 16)
    assert [type(m).__name__ for m in block] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert block[0].weight.shape == (4, 32) and block[2].weight.shape == (16, 4)
    assert (block(torch.randn(5, 32)) >= 0).all()


def test_clipseg_forward_equals_upstream_forward_exactly():
    model, processor = build_tiny("clipseg", seed=0)
    batch = example_batch(SPEC, processor)
    with torch.no_grad():
        upstream = model(**batch)
        ours = clipseg_forward(model, **batch)
    assert torch.equal(upstream.logits, ours.logits)
    assert torch.equal(upstream.conditional_embeddings, ours.conditional_embeddings)


def test_dense_vlc_placement_and_shapes():
    peft_model, _, _ = _setup(variant="dense", modality="VLC", dense_layers=2)
    dense = _layers(peft_model, OutputAdapterLayer)
    expected = {f"clip.{t}_model.encoder.layers.{i}.{p}" for t in ("vision", "text") for i in (0, 1)
                for p in ("self_attn", "mlp")}
    assert set(dense) == expected
    block = dense["clip.vision_model.encoder.layers.0.mlp"].vlsm_adapter["default"]
    assert block[0].weight.shape == (64, 32) and block[2].weight.shape == (32, 64)  # the paper's 64, not scaled to d
    conditioning = _layers(peft_model, ConditioningAdapterLayer)["clip.text_projection"]
    assert len(conditioning.vlsm_text) == 0
    assert conditioning.vlsm_conditioning["default"][0].weight.shape == (16, 32)  # proj 32 -> 16 -> 32


def test_shallow_vl_placement_and_shapes():
    peft_model, _, _ = _setup(variant="shallow", modality="VL", r=8)
    vision = _layers(peft_model, InputAdapterLayer)
    assert set(vision) == {f"decoder.reduces.{i}" for i in range(3)}
    assert vision["decoder.reduces.0"].vlsm_adapter["default"][0].weight.shape == (8, 32)
    text = _layers(peft_model, ConditioningAdapterLayer)["clip.text_projection"]
    assert len(text.vlsm_text["default"]) == 3 and "default" not in text.vlsm_conditioning
    assert not _layers(peft_model, OutputAdapterLayer)
    encoder_params = [n for n, p in peft_model.named_parameters() if p.requires_grad and "encoder" in n]
    assert not encoder_params


@pytest.mark.parametrize("variant,modality", list(itertools.product(("dense", "shallow"), ("V", "VL", "VLC"))))
def test_variants_train_disable_and_reload_exactly(variant, modality, tmp_path):
    peft_model, batch, base = _setup(variant=variant, modality=modality)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("vlsm_" in n for n in trainable)
    logits = peft_model(**batch).logits
    assert logits.shape == base.shape
    logits.pow(2).mean().backward()
    reached = [n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(reached) >= 0.75 * len(trainable), "gradients must reach the adapters inside the encoders"
    with torch.no_grad(), peft_model.disable_adapter():
        assert torch.equal(peft_model(**batch).logits, base)
    with torch.no_grad():
        adapted = peft_model(**batch).logits.clone()
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build_tiny("clipseg", seed=0)[0], tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, adapted)


def test_merge_refuses_and_unload_restores_the_base_model():
    peft_model, batch, base = _setup(variant="shallow", modality="VLC")
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        peft_model.merge_and_unload()
    model = peft_model.unload()
    assert "forward" not in model.__dict__
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)


def test_train_decoder_option_and_modules_to_save_clash():
    dense, _, _ = _setup(variant="dense", modality="V", train_decoder=True)
    assert dense.peft_config["default"].modules_to_save == ["decoder"]
    assert any(p.requires_grad and ".decoder." in n for n, p in dense.named_parameters())
    shallow, batch, _ = _setup(variant="shallow", modality="V", train_decoder=True)
    assert "decoder.film_mul" in shallow.peft_config["default"].modules_to_save
    assert len(_layers(shallow, InputAdapterLayer)) == 3  # the adapters in decoder.reduces survive
    shallow(**batch).logits.sum().backward()
    with pytest.raises(ValueError, match="decoder.reduces"):
        SegAdapterConfig(variant="shallow", modules_to_save=["decoder"])


def test_wrong_base_model_says_what_differs(tmp_path):
    peft_model, _, _ = _setup(variant="dense", modality="VL")
    peft_model.save_pretrained(tmp_path)
    other, _ = build_tiny("clipseg", seed=0, vision={"hidden_size": 48, "intermediate_size": 96})
    with pytest.raises(ValueError, match="vision_hidden: 48 here, 32 in the adapter"):
        PeftModel.from_pretrained(other, tmp_path)
    clip, _ = build_tiny("clip", seed=0)
    with pytest.raises(ValueError, match="needs a CLIPSeg model"):
        get_peft_model(clip, SegAdapterConfig())


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        SegAdapterConfig(variant="deep")
    with pytest.raises(ValueError, match="modality"):
        SegAdapterConfig(modality="L")


def test_dice_and_iou_on_hand_made_masks():
    target = torch.zeros(3, 4, 4, dtype=torch.bool)
    target[:, :2, :2] = True  # 4 pixels
    pred = torch.zeros_like(target)
    pred[0, :2, :2] = True  # perfect
    pred[1, :2, :] = True  # 8 pixels, 4 overlap: dice 8/12, iou 4/8
    dice, iou = dice_iou(pred, target)
    torch.testing.assert_close(dice, torch.tensor([1.0, 2 / 3, 0.0]))
    torch.testing.assert_close(iou, torch.tensor([1.0, 0.5, 0.0]))
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert dice_iou(empty, empty)[0].item() == 1.0


def test_segmentation_loss_weights():
    target = torch.zeros(2, 8, 8)
    target[:, 2:5, 2:5] = 1
    perfect = (target * 2 - 1) * 20
    assert soft_dice_loss(perfect, target) < 0.01
    logits = torch.randn(2, 8, 8)
    loss, parts = segmentation_loss(logits, target)
    assert float(loss) == pytest.approx(1.5 * parts["dice_loss"] + 1.0 * parts["bce"], rel=1e-5)


def test_segmentation_task_end_to_end():
    from adaptune.models import LoadedModel
    from adaptune.tasks.segmentation import SegmentationParams, SegmentationTask

    model, processor = build_tiny("clipseg", seed=0)
    loaded = LoadedModel(model, processor, SPEC, "tiny:clipseg")
    task = SegmentationTask(SegmentationParams(num_train=4, train_offset=2, num_eval=4), loaded)
    data = task.datasets()
    assert len(data["train"]) == 4 and data["train"][0]["id"].endswith("000002-t0")
    peft_model = get_peft_model(model, SegAdapterConfig(variant="dense", modality="VLC"))
    batch = task.collate([data["train"][i] for i in range(2)])
    assert batch["labels"].shape == (2, 64, 64)
    out = task.loss(peft_model, batch)
    out.loss.backward()
    assert set(out.logs) == {"dice_loss", "bce"}
    assert out.logits.shape == (2 * 64 * 64, 2)  # one Bernoulli [0, x] per pixel, for method objectives
    metrics = task.evaluate(peft_model, "test")
    assert set(metrics) == {"dice", "iou", "n"} and 0 <= metrics["dice"] <= 1


def test_shallow_text_adapters_with_a_shallower_text_tower():
    """Text states pair with the vision extract layers at the same relative depth (2 text vs 4 vision layers)."""
    from adaptune.methods.seg_adapter.clipseg_forward import text_state_layers

    model, processor = build_tiny("clipseg", seed=0, text={"num_hidden_layers": 2})
    assert text_state_layers(model) == [1, 2, 2]
    batch = example_batch(SPEC, processor)
    peft_model = get_peft_model(model, SegAdapterConfig(variant="shallow", modality="VL"))
    peft_model(**batch).logits.sum().backward()
    text = _layers(peft_model, ConditioningAdapterLayer)["clip.text_projection"].vlsm_text["default"]
    assert all(block[0].weight.grad is not None for block in text)
