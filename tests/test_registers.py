"""PH-Reg (`registers`): registers in and out, unlocked copies, distillation views/targets/loss, diagnostics, task.

Run: .venv/bin/python -m pytest tests/test_registers.py -q
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model

import adaptune  # noqa: F401
from adaptune.methods.registers import RegistersConfig, diagnostics
from adaptune.methods.registers.distill import (
    TargetCache,
    View,
    apply_view,
    denoise,
    denoised_target,
    distill_loss,
    fps_views,
    map_back,
    patch_features,
)
from adaptune.models import LoadedModel, build_tiny, get_family
from adaptune.models.inputs import example_batch


def _frozen_tiny(family: str):
    model, processor = build_tiny(family, seed=0)
    model.requires_grad_(False)  # compare against a frozen base (see the report: torch MHA fast path on SigLIP)
    return model, processor


def _pixels(family: str, processor, n: int = 2) -> torch.Tensor:
    return example_batch(get_family(family), processor, n=n, size=32)["pixel_values"]


# ---------------------------------------------------------------------------------------- registers in the model


@pytest.mark.parametrize("family", ["clip", "siglip", "dinov2", "llava", "clipseg"])
def test_registers_are_dropped_at_the_output_and_disable_is_exact(family):
    model, processor = _frozen_tiny(family)
    spec = get_family(family)
    batch = example_batch(spec, processor)
    vision = spec.get_module(model, "vision") if spec.vision_path else model
    pixels = batch["pixel_values"]
    with torch.no_grad():
        base_vision = vision(pixel_values=pixels, output_hidden_states=True)
        base_out = model(**batch)
    peft_model = get_peft_model(model, RegistersConfig(num_registers=3)).eval()
    seen_lengths = []
    block = vision.encoder.layers[0] if hasattr(vision.encoder, "layers") else vision.encoder.layer[0]
    handle = block.register_forward_hook(lambda m, a, o: seen_lengths.append(a[0].shape[1]))
    with torch.no_grad():
        adapted = vision(pixel_values=pixels, output_hidden_states=True)
        peft_model(**batch)
    handle.remove()
    assert seen_lengths[0] == base_vision.last_hidden_state.shape[1] + 3  # registers inside the encoder
    assert adapted.last_hidden_state.shape == base_vision.last_hidden_state.shape
    assert [h.shape for h in adapted.hidden_states] == [h.shape for h in base_vision.hidden_states]
    assert not torch.allclose(adapted.last_hidden_state, base_vision.last_hidden_state)
    with peft_model.disable_adapter(), torch.no_grad():
        again = peft_model(**batch)
    for key in ("logits", "logits_per_image", "last_hidden_state"):
        if getattr(base_out, key, None) is not None:
            torch.testing.assert_close(getattr(again, key), getattr(base_out, key), rtol=0, atol=0)


def test_llava_feature_layer_minus_two_sees_no_registers():
    model, processor = build_tiny("llava")
    model.config.vision_feature_layer = -2
    batch = example_batch(get_family("llava"), processor)
    peft_model = get_peft_model(model, RegistersConfig(num_registers=2))
    out = peft_model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    out.logits.float().pow(2).mean().backward()
    assert peft_model.base_model.model.model.vision_tower.embeddings.reg_tokens["default"].grad is not None


def test_llava_distils_the_layer_it_reads_and_every_trainable_weight_learns():
    """LLaVA-1.5 reads the tower's hidden_states[-2] (the tiny LLaVA too): the teacher's target is that layer (not
    `last_hidden_state`), the unlocked block is the one that produces it (not the last one, whose copy would get zero
    gradient), and one distillation step gives every trainable weight a non-zero gradient."""
    model, processor = _frozen_tiny("llava")
    layer = model.config.vision_feature_layer
    vision = model.model.vision_tower
    blocks = len(vision.encoder.layers)
    assert layer == -2 and blocks == 2
    pixels = _pixels("llava", processor)
    with torch.no_grad():
        states = vision(pixel_values=pixels, output_hidden_states=True).hidden_states
    peft_model = get_peft_model(model, RegistersConfig(num_registers=2, num_views=3))
    config = peft_model.peft_config["default"]
    assert config.feature_block == blocks + layer == 0
    assert "model.vision_tower.encoder.layers.0" in config.target_modules
    assert not any(f"layers.{blocks - 1}." in n for n, p in peft_model.named_parameters() if p.requires_grad)
    target = denoised_target(peft_model, "llava", pixels, [View()])  # one identity view: the base's own features
    read = states[layer][:, 1:].reshape(target.shape)  # CLS dropped, as LLaVA's "default" strategy does
    torch.testing.assert_close(target, read, rtol=0, atol=1e-6)
    assert not torch.allclose(target, states[-1][:, 1:].reshape(target.shape))  # the tower's output is another layer
    from adaptune.methods.registers.distill import Distiller

    loss, _ = Distiller(config, "llava").loss(peft_model, pixels)
    loss.backward()
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert len(trainable) > 3
    silent = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"trainable weights without gradient: {silent}"


def test_llava_adapter_refuses_a_model_that_reads_another_layer(tmp_path):
    model, _ = build_tiny("llava")
    get_peft_model(model, RegistersConfig(num_registers=2)).save_pretrained(tmp_path)
    assert PeftModel.from_pretrained(build_tiny("llava")[0], tmp_path).peft_config["default"].feature_block == 0
    last, _ = build_tiny("llava")
    last.config.vision_feature_layer = -1  # reads the tower's output: the registers were trained for block 0
    with pytest.raises(ValueError, match="feature_block 0 vs 1"):
        PeftModel.from_pretrained(last, tmp_path)


def test_unlocked_copies_are_trained_and_saved_originals_kept(tmp_path):
    model, processor = _frozen_tiny("clip")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = get_peft_model(model, RegistersConfig(num_registers=4))
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("reg_tokens" in n for n in names)
    assert any("patch_embedding__weight" in n for n in names)
    assert any("position_embedding__weight" in n for n in names)
    assert any("encoder.layers.1.reg_unlocked" in n and "mlp__fc1__weight" in n for n in names)
    assert not any("class_embedding" in n for n in names)
    pixels = _pixels("clip", processor)
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        patch_features(peft_model, "clip", pixels).pow(2).mean().backward()
        opt.step()
    base_now = peft_model.get_base_model().state_dict()
    for key, value in original.items():
        wrapped = key.replace("embeddings.", "embeddings.base_layer.").replace("layers.1.", "layers.1.base_layer.")
        assert torch.equal(base_now.get(key, base_now.get(wrapped)), value), key
    peft_model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = list(load_file(tmp_path / "adapter_model.safetensors"))
    assert any(k.endswith("reg_tokens") for k in keys) and any("reg_unlocked.params" in k for k in keys)
    assert not any(".default" in k for k in keys)  # saved without the adapter name
    with torch.no_grad():
        expected = patch_features(peft_model, "clip", pixels)
    reloaded = PeftModel.from_pretrained(build_tiny("clip")[0], tmp_path, adapter_name="other").eval()
    with torch.no_grad():
        torch.testing.assert_close(patch_features(reloaded, "clip", pixels), expected, rtol=0, atol=0)


@pytest.mark.parametrize("family,words", [("qwen3_vl", "cu_seqlens"), ("qwen2_5_vl", "windowed"),
                                          ("smolvlm", "padding mask")])
def test_unsupported_vision_towers_fail_clearly(family, words):
    model, _ = build_tiny(family)
    with pytest.raises(ValueError, match=f"not supported on {family}.*{words}"):
        get_peft_model(model, RegistersConfig())


def test_wrong_base_model_load_says_what_differs(tmp_path):
    model, _ = build_tiny("clip")
    get_peft_model(model, RegistersConfig(num_registers=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="base_family clip vs dinov2"):
        PeftModel.from_pretrained(build_tiny("dinov2")[0], tmp_path)
    deeper, _ = build_tiny("clip", vision={"num_hidden_layers": 3})
    with pytest.raises(ValueError, match="vision_layers 2 vs 3"):
        PeftModel.from_pretrained(deeper, tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="unlock"):
        RegistersConfig(unlock=["everything"])
    with pytest.raises(ValueError, match="num_registers"):
        RegistersConfig(num_registers=0)
    with pytest.raises(ValueError, match="num_views"):  # the distillation settings are the method's, checked here
        RegistersConfig(num_views=0)


# ------------------------------------------------------------------------------------------------- distillation


def test_fps_views_deterministic_identity_first_and_spread():
    views = fps_views((8, 8), num_views=10, max_shift=0.15, seed=7)
    assert views == fps_views((8, 8), num_views=10, max_shift=0.15, seed=7)
    assert views[0] == View(0, 0, False) and len(views) == 10
    assert all(abs(v.dy) <= 1 and abs(v.dx) <= 1 for v in views)  # round(0.15 * 8) = 1 patch
    assert len(set(views[:6])) == 6
    assert fps_views((8, 8), 10, seed=8) != views


def test_view_mapping_back_is_exact_for_a_shifted_identity():
    pixels = torch.randn(2, 3, 32, 48)
    identity = lambda x: F.avg_pool2d(x, 8).permute(0, 2, 3, 1)  # noqa: E731  per-patch mean: moves with the image
    for view in (View(1, -2, False), View(-1, 1, True), View(0, 0, True)):
        mapped, covered = map_back(identity(apply_view(pixels, view, 8, fill=5.0)), view)
        truth = identity(pixels)
        mask = covered.bool()
        torch.testing.assert_close(mapped[:, mask], truth[:, mask], rtol=0, atol=1e-6)  # flip: summation order
        assert int(mask.sum()) == (4 - abs(view.dy)) * (6 - abs(view.dx))
    target = denoise(identity, pixels, fps_views((4, 6), 10, seed=0), 8, fill=5.0)
    torch.testing.assert_close(target, identity(pixels), rtol=0, atol=1e-6)


def test_apply_view_shift_flip_and_fill():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    shifted = apply_view(image, View(1, 0, False), patch=2, fill=-1.0)
    assert torch.equal(shifted[0, 0, :2], torch.full((2, 4), -1.0)) and torch.equal(shifted[0, 0, 2:], image[0, 0, :2])
    flipped = apply_view(image, View(0, 0, True), patch=2)
    assert torch.equal(flipped, image.flip(-1))


def test_denoised_target_loss_and_a_few_steps(tmp_path):
    torch.manual_seed(0)  # register initialisation
    model, processor = build_tiny("clip")
    peft_model = get_peft_model(model, RegistersConfig(num_registers=4))
    pixels = _pixels("clip", processor)
    views = fps_views((4, 4), 4, seed=0)
    target = denoised_target(peft_model, "clip", pixels, views)
    assert target.shape == (2, 4, 4, 32) and not target.requires_grad
    cache = TargetCache(tmp_path, namespace="tiny:clip")
    cached = cache.targets(peft_model, "clip", pixels, views)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    torch.testing.assert_close(cache.targets(peft_model, "clip", pixels, views), cached, rtol=0, atol=0)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-4)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss, parts = distill_loss(patch_features(peft_model, "clip", pixels), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(parts) == {"cosine", "mse"} and losses[-1] < losses[0]


def test_clipseg_registers_train_through_its_clip_encoder():
    model, processor = build_tiny("clipseg")
    peft_model = get_peft_model(model, RegistersConfig(num_registers=2))
    pixels = example_batch(get_family("clipseg"), processor)["pixel_values"]
    loss, _ = distill_loss(patch_features(peft_model, "clipseg", pixels), torch.zeros(2, 8, 8, 32))
    loss.backward()
    tokens = peft_model.base_model.model.clip.vision_model.embeddings.reg_tokens["default"]
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------- diagnostics


def test_diagnostics_numbers_and_picture(tmp_path):
    features = torch.ones(2, 4, 4, 8)
    features[0, 1, 2] *= 50.0
    assert diagnostics.outlier_share(features) == pytest.approx(1 / 32)
    cos = diagnostics.cosine_to_target(features, features)
    stats = diagnostics.percentiles(cos)
    assert stats["p50"] == pytest.approx(1.0) and {"p1", "p99", "mean"} <= set(stats)
    maps = diagnostics.norm_maps(features)
    path = diagnostics.save_norm_figure({"base": maps, "registers": maps / 2}, tmp_path / "norms.png")
    assert path.stat().st_size > 1000


def test_register_distill_task(tmp_path):
    from adaptune.tasks.register_distill import RegisterDistillParams, RegisterDistillTask
    from adaptune.train.objectives import bind, training_loss

    model, processor = build_tiny("clip")
    loaded = LoadedModel(model=model, processor=processor, family=get_family("clip"), source="tiny:clip")
    params = RegisterDistillParams(dataset="synthetic", num_train=4, num_eval=3, cache_dir=str(tmp_path / "cache"))
    task = RegisterDistillTask(params, loaded, seed=0)
    peft_model = get_peft_model(model, RegistersConfig(num_registers=2, num_views=3))  # the views are the method's
    task.on_train_begin(peft_model)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4
    batch = task.collate(task.datasets()["train"][:2])
    assert task.loss(peft_model, batch).loss is None  # the task only provides images; the loss is the method's
    loss, logs = training_loss(peft_model, task, batch, bind(peft_model, task))
    loss.backward()
    assert "cosine" in logs
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4  # the objective read the task's cache
    metrics = task.evaluate(peft_model, "validation")
    assert {"cos/p50", "base_cos/p50", "outlier_share", "base_outlier_share"} <= set(metrics)
    sections = task.report_sections(peft_model, tmp_path)
    assert (tmp_path / "plots" / "register_norms.png").exists() and "register_norms.png" in sections[-1]
