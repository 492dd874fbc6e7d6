"""Every model family: tiny build, forward, save/load round trip, visual-token accounting, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import adaptune
from adaptune.models import ModelLoadError, UnsupportedModelError, build_tiny, detect_family, get_family, load_model
from adaptune.models.inputs import example_batch, example_images, main_output

FAMILY_NAMES = list(adaptune.FAMILIES)


def test_eight_families_registered():
    assert set(FAMILY_NAMES) == {"qwen3_vl", "qwen2_5_vl", "llava", "smolvlm", "clip", "siglip", "dinov2", "clipseg"}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tiny_roundtrip_identical(family, tmp_path):
    model, processor = build_tiny(family, seed=0)
    spec = get_family(family)
    assert detect_family(model) is spec
    assert type(model).__name__ == spec.model_class
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    batch = example_batch(spec, processor)
    with torch.no_grad():
        expected = main_output(spec, model(**batch))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.family is spec
    batch2 = example_batch(spec, loaded.processor)
    for key in batch:
        torch.testing.assert_close(batch[key], batch2[key], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(main_output(spec, loaded.model(**batch2)), expected, rtol=0, atol=0)


def test_tiny_is_seeded():
    a, _ = build_tiny("qwen3_vl", seed=1)
    b, _ = build_tiny("qwen3_vl", seed=1)
    c, _ = build_tiny("qwen3_vl", seed=2)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl", "llava", "smolvlm"])
def test_visual_tokens_match_placeholders(family):
    model, processor = build_tiny(family)
    spec = get_family(family)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(spec.image_token)
    for size in (64, 128):
        image = example_images(1, size)[0]
        batch = example_batch(spec, processor, n=1, size=size)
        assert int((batch["input_ids"] == image_token_id).sum()) == spec.visual_tokens(processor, size, size), image


def test_qwen3_half_resolution_costs_a_quarter():
    _, processor = build_tiny("qwen3_vl")
    spec = get_family("qwen3_vl")
    assert spec.visual_tokens(processor, 128, 128) == 16
    assert spec.visual_tokens(processor, 64, 64) == 4


def test_family_parts_resolve():
    for name in FAMILY_NAMES:
        spec = get_family(name)
        model, _ = build_tiny(name)
        for part in ("vision", "projector", "language_model", "vision_blocks"):
            if getattr(spec, f"{part}_path") is not None:
                assert isinstance(spec.get_module(model, part), torch.nn.Module)


def test_unsupported_family_lists_supported():
    with pytest.raises(UnsupportedModelError, match="qwen3_vl.*clipseg"):
        get_family("gpt2")
    with pytest.raises(UnsupportedModelError, match="supported families"):
        detect_family({"model_type": "bert"})


def test_missing_model_path_is_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_named_sources_come_from_the_registry(tmp_path):
    """"default" and "pretrained:*" are registered by the packages that own them; a plugin can add a prefix."""
    from adaptune.registry import SOURCES

    assert {"default", "pretrained"} <= set(SOURCES)
    with pytest.raises(ModelLoadError, match="unknown pre-trained tiny model 'pretrained:nope'"):
        load_model("pretrained:nope")
    model, processor = build_tiny("clip")
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    SOURCES.register("testdir", lambda spec, seed: tmp_path / spec)
    try:
        assert load_model("testdir:clip").family.name == "clip"
        with pytest.raises(ModelLoadError, match="does not exist"):
            load_model("testdir:missing")
    finally:
        SOURCES._items.pop("testdir")


def test_wrong_family_for_folder(tmp_path):
    model, processor = build_tiny("clip")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="not a qwen3_vl model"):
        load_model(tmp_path, family="qwen3_vl")


def test_info_json_lists_families_and_sections():
    out = subprocess.run([sys.executable, "-m", "adaptune", "info", "--json"], capture_output=True, text=True,
                         check=True)
    info = json.loads(out.stdout)
    assert {"model_families", "adapter_methods", "rewards", "judges", "model_sources", "recipe_kinds"} <= set(info)
    assert {"default", "pretrained"} <= set(info["model_sources"]) and {"adapter", "grpo"} <= set(info["recipe_kinds"])
    assert len(info["model_families"]) == 8
    assert "lora" in info["adapter_methods"]
