"""Library defaults are sized for real checkpoints (issue 15); tiny values live in the tiny recipes and tests.

Run: .venv/bin/python -m pytest tests/test_real_defaults.py -q
"""

from __future__ import annotations

import torch
from peft import get_peft_model

import adaptune  # noqa: F401
from adaptune.methods.flex_projector import FlexProjectorConfig
from adaptune.methods.seg_adapter import SegAdapterConfig
from adaptune.methods.seg_adapter.layer import OutputAdapterLayer
from adaptune.models import build_tiny, get_family
from adaptune.models import loader
from adaptune.rl.sections import EnvParams


def test_tokenflex_budgets_are_the_papers():
    config = FlexProjectorConfig()
    assert config.budgets == [64, 144, 256] and config.budget_weights == [2.0, 3.0, 5.0]


def test_turn_tokens_leave_room_for_real_reasoning():
    assert EnvParams().turn_tokens == 512


def test_four_bit_compute_dtype_is_decided_at_load(monkeypatch):
    spec = get_family("qwen3_vl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loader.quantization_config(spec, "nf4").bnb_4bit_compute_dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert loader.quantization_config(spec, "nf4").bnb_4bit_compute_dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100 / T4
    assert loader.quantization_config(spec, "nf4").bnb_4bit_compute_dtype == torch.float32


def test_vlsm_widths_are_fixed_not_scaled_with_the_model():
    """Dense 64 and shallow 512 on two CLIPSeg widths: the width does not follow the hidden size any more."""
    for hidden in (32, 48):
        model, _ = build_tiny("clipseg", vision={"hidden_size": hidden})
        dense = get_peft_model(model, SegAdapterConfig(variant="dense", modality="V", dense_layers=1))
        layer = dense.base_model.model.clip.vision_model.encoder.layers[0].mlp
        assert isinstance(layer, OutputAdapterLayer)
        assert layer.vlsm_adapter["default"][0].weight.shape == (64, hidden)
    model, _ = build_tiny("clipseg")
    shallow = get_peft_model(model, SegAdapterConfig(variant="shallow", modality="V"))
    widths = {p.shape[0] for n, p in shallow.named_parameters() if "vlsm" in n and n.endswith("0.weight")}
    assert widths == {512}
