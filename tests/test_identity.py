"""Issue 19, identities: an adapter at its documented initialisation (or with its output projection zeroed) is the base
model exactly, registers sit exactly where documented, and a merged mask unmerges to the original weights bit for
bit. (`disable_adapter()` == base for every method and cell is `tests/test_peft_contract.py::
test_disable_adapter_is_base`; it is repeated here once per method after the identity, as the issue asks.)

Methods without an identity initialisation, and why: TokenFLEX's projector replaces the original one (no residual,
new weights: docs/methods.md#flex_projector); its pooling is the identity when the budget is the patch grid (tested).
Registers add tokens, so the encoder's attention sees them; only their position and removal are identities (tested).
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model
from torch import nn

import adaptune
from adaptune.methods.flex_projector.layer import pool_grid
from adaptune.methods.mask_tuning import MaskTuningConfig
from adaptune.methods.mask_tuning.layer import MaskTuningLayer
from adaptune.methods.registers.layer import RegisterEmbeddingLayer, drop_registers
from adaptune.methods.seg_adapter import SegAdapterConfig
from adaptune.methods.seg_adapter.layer import Bottleneck, InputAdapterLayer, OutputAdapterLayer
from adaptune.models import build_tiny, get_family
from adaptune.models.inputs import example_batch, main_output


def _base(family):
    torch.manual_seed(0)  # the adapters' own random initialisation, below
    model, processor = build_tiny(family, seed=0)
    model.requires_grad_(False).eval()
    spec = get_family(family)
    batch = example_batch(spec, processor)
    with torch.no_grad():
        expected = main_output(spec, model(**batch)).clone()
    return model, spec, batch, expected


def _out(spec, model, batch):
    with torch.no_grad():
        return main_output(spec, model.eval()(**batch))


# ------------------------------------------------------------------------------------------------ mask tuning


@pytest.mark.parametrize("family", adaptune.METHODS.get("mask_tuning").families)
def test_mask_tuning_at_its_documented_init_is_the_base_exactly(family):
    model, spec, batch, expected = _base(family)
    peft_model = get_peft_model(model, MaskTuningConfig())  # init_score 0.01 > threshold 0.005: every mask is 1
    assert any(isinstance(m, MaskTuningLayer) for m in peft_model.modules())
    torch.testing.assert_close(_out(spec, peft_model, batch), expected, rtol=0, atol=0)
    for module in peft_model.modules():  # mask some weights out: the output changes, disable_adapter() restores
        if isinstance(module, MaskTuningLayer):
            with torch.no_grad():
                module.amt_scores["default"][..., ::2] = -1.0
    assert not torch.equal(_out(spec, peft_model, batch), expected)
    with peft_model.disable_adapter():
        torch.testing.assert_close(_out(spec, peft_model, batch), expected, rtol=0, atol=0)


def test_mask_merge_then_unmerge_restores_the_weight_bit_for_bit():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    original = base.weight.detach().clone()
    layer = MaskTuningLayer(base, "default", init_score=0.01, threshold=0.005)
    with torch.no_grad():
        layer.amt_scores["default"][0, :3] = 0.005  # exactly at the threshold: masked out
        layer.amt_scores["default"][1, 1] = -2.0
    x = torch.randn(3, 6)
    adapted = layer(x).detach()
    mask = torch.ones_like(original)
    mask[0, :3] = 0
    mask[1, 1] = 0
    assert torch.equal(adapted, nn.functional.linear(x, original * mask, base.bias))
    assert layer.masked_count("default") == (4, 30)
    assert layer.merged_adapters == []
    layer.merge()
    assert layer.merged_adapters == ["default"] and layer.merged
    assert torch.equal(base.weight, original * mask)
    assert torch.equal(layer(x), adapted)  # merged: the base layer alone gives the adapted output
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()  # merging again is a no-op, not a second mask on top
    assert layer.merged_adapters == ["default"]
    layer.unmerge()
    assert layer.merged_adapters == [] and not layer.merged
    assert torch.equal(base.weight, original)  # bit for bit, including the masked-out weights
    assert torch.equal(layer(x), adapted)
    with pytest.warns(UserWarning, match="Already unmerged"):
        layer.unmerge()


def test_disabled_mask_layer_unmerges_and_runs_the_base():
    base = nn.Linear(4, 3)
    original = base.weight.detach().clone()
    layer = MaskTuningLayer(base, "default")
    with torch.no_grad():
        layer.amt_scores["default"][0] = -1.0
    layer.merge()
    layer.enable_adapters(False)
    x = torch.randn(2, 4)
    assert torch.equal(layer(x), nn.functional.linear(x, original, base.bias))
    assert torch.equal(base.weight, original) and layer.merged_adapters == []


# ------------------------------------------------------------------------------------------------ seg_adapter


def _zero_up_projections(model):
    count = 0
    for module in model.modules():
        if isinstance(module, Bottleneck):
            with torch.no_grad():
                module[2].weight.zero_()
                module[2].bias.zero_()
            count += 1
    return count


@pytest.mark.parametrize("variant", ["dense", "shallow"])
def test_seg_adapter_with_zeroed_up_projections_is_the_base_exactly(variant):
    model, spec, batch, expected = _base("clipseg")
    width = {"dense": 4, "shallow": 32}[variant]  # tiny widths (the defaults 64 / 512 are the paper's, for d 512-768)
    peft_model = get_peft_model(model, SegAdapterConfig(variant=variant, modality="VLC", r=width))
    adapted = _out(spec, peft_model, batch)
    assert not torch.equal(adapted, expected)  # N(0, 1e-3) up-projections: close to, not equal to, the base
    torch.testing.assert_close(adapted, expected, rtol=0, atol=1e-1)
    assert _zero_up_projections(peft_model) > 0
    torch.testing.assert_close(_out(spec, peft_model, batch), expected, rtol=0, atol=0)
    with peft_model.disable_adapter():
        torch.testing.assert_close(_out(spec, peft_model, batch), expected, rtol=0, atol=0)


def test_vlsm_layers_are_residual():
    torch.manual_seed(0)
    inner = nn.Linear(6, 6)
    x = torch.randn(2, 3, 6)
    out_layer = OutputAdapterLayer(inner, "default", dim=6, r=2, init_scale=0.5)
    h = inner(x)
    assert torch.allclose(out_layer(x), h + out_layer.vlsm_adapter["default"](h), rtol=0, atol=0)
    in_layer = InputAdapterLayer(copy.deepcopy(inner), "default", dim=6, r=2, init_scale=0.5)
    adapter = in_layer.vlsm_adapter["default"]
    assert torch.allclose(in_layer(x), in_layer.base_layer(x + adapter(x)), rtol=0, atol=0)
    for layer in (out_layer, in_layer):
        _zero_up_projections(layer)
    assert torch.equal(out_layer(x), h) and torch.equal(in_layer(x), in_layer.base_layer(x))

    class Pair(nn.Module):  # attention blocks return tuples: the adapter applies to the first element only
        def forward(self, x):
            return x * 2, "weights"

    tuple_layer = OutputAdapterLayer(Pair(), "default", dim=6, r=2, init_scale=0.5)
    hidden, extra = tuple_layer(x)
    assert extra == "weights" and torch.equal(hidden, x * 2 + tuple_layer.vlsm_adapter["default"](x * 2))


def test_bottleneck_is_relu_up_of_relu_down():
    torch.manual_seed(0)
    block = Bottleneck(4, 2, 3, init_scale=0.5)
    x = torch.randn(5, 4)
    expected = torch.relu(block[2](torch.relu(block[0](x))))
    assert torch.equal(block(x), expected) and torch.equal(block[2].bias, torch.zeros(3))
    assert block(x.double()).dtype == torch.float64
    assert 0.2 < Bottleneck(64, 64, 64, init_scale=0.5)[2].weight.std() < 1.0  # N(0, init_scale)


# ------------------------------------------------------------------------------------------------ registers


class _Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("num_prefix", [0, 1, 2])
def test_registers_are_inserted_after_the_prefix_tokens_and_dropped_exactly(num_prefix):
    torch.manual_seed(0)
    base = _Embed()
    layer = RegisterEmbeddingLayer(base, "default", num_prefix=num_prefix, num_registers=3, hidden_size=4,
                                   unlocked=[])
    x = torch.randn(2, 5, 3)
    plain = base(x)
    out = layer(x)
    regs = layer.reg_tokens["default"]
    assert out.shape == (2, 8, 4)
    assert torch.equal(out[:, :num_prefix], plain[:, :num_prefix])  # the CLS token stays first
    assert torch.equal(out[:, num_prefix:num_prefix + 3], regs.unsqueeze(0).expand(2, -1, -1))
    assert torch.equal(out[:, num_prefix + 3:], plain[:, num_prefix:])
    assert torch.equal(drop_registers(out, num_prefix, 3), plain)
    layer.enable_adapters(False)
    assert torch.equal(layer(x), plain)


# ------------------------------------------------------------------------------------------------ flex_projector


def test_pooling_to_the_patch_grid_itself_is_the_identity():
    grid = torch.randn(2, 5, 4, 6)
    assert torch.equal(pool_grid(grid, 4, 6), grid)
    assert torch.equal(pool_grid(grid, 2, 3), nn.functional.avg_pool2d(grid, 2))
