"""Method layers on toy modules (issue 19, mutation testing): exact positions, identities, dtypes, kwargs pass-through,
the gradient-checkpointing path and attribute forwarding, each checked directly on the layer, without a model.

Run: .venv/bin/python -m pytest tests/test_method_layers.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adaptune.methods.registers.layer import ParamBank, RegisterBlockLayer, RegisterEmbeddingLayer

# ------------------------------------------------------------------------------------------------ registers (PH-Reg)


class ToyEmbeddings(nn.Module):
    """(B, L, d_in) -> (B, L, d): a linear 'patch embedding' plus a position table, with a keyword argument."""

    def __init__(self, d_in: int = 3, d: int = 4, length: int = 5, dtype=torch.float32) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d, dtype=dtype)
        self.pos = nn.Parameter(torch.randn(length, d, dtype=dtype))
        self.config = "toy-config"

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return (self.proj(x) + self.pos) * scale


class ToyBlock(nn.Module):
    """A block that returns a tuple (hidden, extra) or a tensor, with a keyword argument, and records whether its own
    gradient checkpointing was on when it ran (as transformers' GradientCheckpointingLayer would read it)."""

    def __init__(self, d: int = 4, as_tuple: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.as_tuple = as_tuple
        self.gradient_checkpointing = False
        self.seen_flags: list = []
        self.checkpoint_calls = 0

    def forward(self, h: torch.Tensor, mult: float = 1.0):
        self.seen_flags.append(self.gradient_checkpointing)
        out = self.lin(h) * mult
        return (out, "extra", 7) if self.as_tuple else out

    def _gradient_checkpointing_func(self, fn, *args):
        self.checkpoint_calls += 1
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


def _emb_layer(num_prefix=1, registers=2, unlocked=(), **kw):
    torch.manual_seed(0)
    base = ToyEmbeddings(**kw).requires_grad_(False)
    return base, RegisterEmbeddingLayer(base, "default", num_prefix, registers, base.pos.shape[1], list(unlocked))


@pytest.mark.parametrize("unlocked", [(), ("proj.weight",)])
@pytest.mark.parametrize("num_prefix", [0, 1, 2])
def test_registers_are_inserted_right_after_the_prefix_tokens(num_prefix, unlocked):
    base, layer = _emb_layer(num_prefix=num_prefix, registers=3, unlocked=unlocked)
    x = torch.randn(2, 5, 3)
    want = base(x, scale=2.0)
    out = layer(x, scale=2.0)  # the keyword reaches the base module (plain and functional_call paths)
    assert out.shape == (2, 5 + 3, 4)
    p = num_prefix
    torch.testing.assert_close(out[:, :p], want[:, :p], rtol=0, atol=0)
    torch.testing.assert_close(out[:, p:p + 3], layer.reg_tokens["default"].expand(2, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(out[:, p + 3:], want[:, p:], rtol=0, atol=0)
    layer.enable_adapters(False)  # disabled: exactly the base module, keyword included
    torch.testing.assert_close(layer(x, scale=3.0), base(x, scale=3.0), rtol=0, atol=0)


def test_register_count_and_init_std():
    base, layer = _emb_layer(registers=2)
    assert layer.reg_count == {"default": 2}
    torch.manual_seed(0)
    big = ToyEmbeddings(d=64, length=5)
    default = RegisterEmbeddingLayer(big, "default", 1, 256, 64, [])
    assert default.reg_tokens["default"].std().item() == pytest.approx(1 / math.sqrt(64), rel=0.1)
    half = RegisterEmbeddingLayer(big, "default", 1, 256, 64, [], init_std=0.5)
    assert half.reg_tokens["default"].std().item() == pytest.approx(0.5, rel=0.1)
    zero = RegisterEmbeddingLayer(big, "default", 1, 4, 64, [], init_std=0.0)
    assert torch.count_nonzero(zero.reg_tokens["default"]) == 0
    zero.update_layer("other", 3, 64, [], init_std=0.0)
    assert torch.count_nonzero(zero.reg_tokens["other"]) == 0 and zero.reg_count["other"] == 3


def test_register_tokens_follow_the_base_dtype_and_are_cast_back_at_forward():
    base, layer = _emb_layer(dtype=torch.float64)
    assert layer.reg_tokens["default"].dtype == torch.float64
    base, layer = _emb_layer(dtype=torch.bfloat16)
    assert layer.reg_tokens["default"].dtype == torch.bfloat16
    layer.reg_tokens["default"].data = layer.reg_tokens["default"].data.float()  # PEFT's fp32 adapter on a bf16 base
    out = layer(torch.randn(2, 5, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_param_bank_casts_a_copy_of_another_dtype_to_the_original_and_keeps_the_gradient():
    base = ToyEmbeddings(dtype=torch.float64)
    bank = ParamBank(base, ["proj.weight"])
    same = bank.overrides(base)["proj.weight"]
    assert same is bank.params["proj__weight"]
    bank.params["proj__weight"].data = bank.params["proj__weight"].data.float()
    cast = bank.overrides(base)["proj.weight"]
    assert cast.dtype == torch.float64
    cast.sum().backward()
    assert bank.params["proj__weight"].grad is not None


def test_two_active_register_adapters_are_refused_and_an_unknown_one_is_the_base():
    base, layer = _emb_layer()
    layer.update_layer("second", 2, 4, [])
    x = torch.randn(1, 5, 3)
    layer.set_adapter(["default", "second"])
    with pytest.raises(ValueError, match="one active adapter at a time"):
        layer(x)
    layer.set_adapter("missing")
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)


@pytest.mark.parametrize("unlocked", [(), ("lin.weight",)])
@pytest.mark.parametrize("as_tuple", [True, False])
def test_block_layer_drops_exactly_the_registers_from_tuple_and_tensor_outputs(as_tuple, unlocked):
    torch.manual_seed(0)
    base = ToyBlock(as_tuple=as_tuple).requires_grad_(False)
    layer = RegisterBlockLayer(base, "default", 1, 2, list(unlocked))
    h = torch.randn(2, 6, 4)
    out = layer(h, mult=2.0)  # the keyword reaches the block
    full = base(h, mult=2.0)
    full_h = full[0] if as_tuple else full
    want = torch.cat([full_h[:, :1], full_h[:, 3:]], dim=1)
    got = out[0] if as_tuple else out
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if as_tuple:
        assert isinstance(out, tuple) and out[1:] == ("extra", 7)
    layer.enable_adapters(False)
    torch.testing.assert_close(layer(h, mult=3.0)[0] if as_tuple else layer(h, mult=3.0),
                               full_h / 2 * 3, rtol=1e-6, atol=1e-6)


def test_block_layer_outside_an_output_collector():
    # no transformers output collector active (a direct call): nothing recorded, nothing to strip
    base = ToyBlock(as_tuple=False)
    layer = RegisterBlockLayer(base, "default", 0, 1, [])
    assert layer(torch.randn(1, 3, 4)).shape == (1, 2, 4)


def test_block_layer_checkpoints_the_swapped_call_and_restores_the_flag():
    torch.manual_seed(0)
    base = ToyBlock(as_tuple=True).requires_grad_(False)
    layer = RegisterBlockLayer(base, "default", 1, 1, ["lin.weight"])
    with torch.no_grad():
        layer.reg_unlocked["default"].params["lin__weight"].mul_(2.0)  # the copy now differs from the original
    base.gradient_checkpointing = True
    layer.train()
    h = torch.randn(2, 4, 4)
    for round_ in (1, 2):  # the flag is restored: the second call checkpoints too
        out = layer(h, mult=2.0)
        assert base.checkpoint_calls == round_
        assert base.gradient_checkpointing is True
        assert not any(base.seen_flags[-2:])  # the block's own checkpointing was off while the swapped call ran
    want = (h @ (2 * base.lin.weight).T + base.lin.bias) * 2.0
    torch.testing.assert_close(out[0], torch.cat([want[:, :1], want[:, 2:]], dim=1))
    assert out[1:] == ("extra", 7)
    out[0].sum().backward()
    assert layer.reg_unlocked["default"].params["lin__weight"].grad is not None
    assert base.lin.weight.grad is None
    # not training (or no grad): the plain functional call, no checkpoint
    layer.eval()
    layer(h)
    assert base.checkpoint_calls == 2


def test_register_layers_cannot_merge_and_say_why():
    base, layer = _emb_layer()
    with pytest.raises(NotImplementedError, match=r"^PH-Reg cannot be merged: register tokens .* in the base "
                                                  r"weights\. Keep the adapter loaded, or use unload\(\) to drop it\.$"):
        layer.merge()
    assert layer.unmerge() is None


def test_register_layer_forwards_unknown_attributes_to_the_base_but_not_its_own():
    base, layer = _emb_layer()
    assert layer.config == "toy-config"
    block_base = ToyBlock()
    block_base.reg_tokens = "not mine"
    block = RegisterBlockLayer(block_base, "default", 1, 1, [])
    assert not hasattr(block, "reg_tokens")  # the block layer has no registers, whatever its base has
    half = RegisterBlockLayer.__new__(RegisterBlockLayer)
    nn.Module.__init__(half)
    assert not hasattr(half, "base_layer")  # AttributeError, not a recursion through __getattr__
    block_base.reg_unlocked = "not mine either"
    half.base_layer = block_base
    assert not hasattr(half, "reg_unlocked")


def test_register_tokens_are_created_on_the_base_device():
    # the meta device stands in for an accelerator: tokens made on the default (CPU) device would not follow the base
    with torch.device("meta"):
        base = ToyEmbeddings()
    layer = RegisterEmbeddingLayer(base, "default", 1, 2, 4, ["proj.weight"])
    assert layer.reg_tokens["default"].device.type == "meta"


# ------------------------------------------------------------------------------------------------ mask tuning (R-AMT)

from adaptune.methods.mask_tuning.layer import MaskTuningLayer  # noqa: E402


class KwLinear(nn.Linear):
    """A Linear whose forward takes an extra positional and keyword argument (passed through by the layer)."""

    def forward(self, x, shift=0.0, scale=1.0):
        return super().forward(x) * scale + shift


def _mask_layer(**kw):
    torch.manual_seed(0)
    base = KwLinear(6, 4).requires_grad_(False)
    return base, MaskTuningLayer(base, "default", **kw)


def test_mask_defaults_and_a_score_exactly_at_the_threshold_is_masked():
    base, layer = _mask_layer()
    assert layer.amt_init_score == {"default": 0.01} and layer.amt_threshold == {"default": 0.005}
    assert repr(layer).startswith("mask_tuning.")
    _, at = _mask_layer(init_score=0.005, threshold=0.005)  # 1[S > t]: a score equal to the threshold masks
    assert torch.count_nonzero(at.amt_mask_bits["default"]) == 0  # the buffer as built, before any state_dict()
    assert torch.count_nonzero(at.mask("default")) == 0
    assert at.masked_count("default") == (24, 24)
    torch.testing.assert_close(at(torch.randn(2, 6)), base.bias.expand(2, -1), rtol=0, atol=0)
    with torch.no_grad():
        layer.amt_scores["default"][0, :3] = 0.005  # refresh_bits (state_dict) uses the same strict comparison
    bits = layer.state_dict()["amt_mask_bits.default"]
    assert bits[0].item() == 0b00011111


def test_mask_layer_refuses_other_layers_and_non_float_weights_saying_what_it_got():
    with pytest.raises(TypeError, match="supports nn.Linear and nn.Conv1d/2d/3d, not Embedding"):
        MaskTuningLayer(nn.Embedding(3, 2), "default")
    ints = nn.Linear(2, 2)
    ints.weight = nn.Parameter(torch.ones(2, 2, dtype=torch.int64), requires_grad=False)
    with pytest.raises(TypeError, match=r"plain floating-point weight, got Parameter of torch\.int64"):
        MaskTuningLayer(ints, "default")


def test_mask_scores_are_fp32_trainable_unless_inference_mode_and_the_mask_has_the_weight_dtype():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        layer = MaskTuningLayer(nn.Linear(3, 2), "default")
    finally:
        torch.set_default_dtype(old)
    assert layer.amt_scores["default"].dtype == torch.float32
    assert layer.mask("default").dtype == torch.float64
    assert layer.amt_scores["default"].requires_grad
    layer.update_layer("default", 0.02, 0.005)  # re-initialising keeps it trainable by default
    assert layer.amt_scores["default"].requires_grad
    layer.update_layer("default", 0.02, 0.005, inference_mode=True)
    assert not layer.amt_scores["default"].requires_grad
    frozen = MaskTuningLayer(nn.Linear(3, 2), "default", inference_mode=True)
    assert not frozen.amt_scores["default"].requires_grad


def test_mask_forward_passes_arguments_through_when_disabled_or_inactive():
    base, layer = _mask_layer()
    x = torch.randn(2, 6)
    layer.enable_adapters(False)
    torch.testing.assert_close(layer(x, 1.0, scale=2.0), base(x, 1.0, scale=2.0), rtol=0, atol=0)
    layer.enable_adapters(True)
    layer.set_adapter("missing")
    torch.testing.assert_close(layer(x, 1.0, scale=2.0), base(x, 1.0, scale=2.0), rtol=0, atol=0)


def _two_masks():
    base, layer = _mask_layer()
    layer.update_layer("other", 0.01, 0.005)
    with torch.no_grad():
        layer.amt_scores["other"][:, 2:] = -1.0  # all masked except the first two input columns
    layer.set_adapter("default")
    return base, layer


def test_effective_weight_and_merge_use_the_named_adapters_not_the_active_ones():
    base, layer = _two_masks()
    w = base.weight.detach().clone()
    other = torch.zeros_like(w)
    other[:, :2] = w[:, :2]
    torch.testing.assert_close(layer.effective_weight(["other"]), other, rtol=0, atol=0)
    torch.testing.assert_close(layer.effective_weight([]), w, rtol=0, atol=0)
    torch.testing.assert_close(layer.effective_weight(), w, rtol=0, atol=0)  # the active one: all ones
    layer.merge(adapter_names=["other"])
    torch.testing.assert_close(base.weight, other, rtol=0, atol=0)
    assert layer.merged_adapters == ["other"]
    layer.unmerge()
    assert torch.equal(base.weight, w)
    layer.merge(adapter_names=["other"])  # a second round trip is exact too
    layer.unmerge()
    assert torch.equal(base.weight, w) and layer.merged_adapters == []
    with pytest.warns(UserWarning, match=r"^Already unmerged\. Nothing to do\.$"):
        layer.unmerge()


def test_safe_merge_refuses_non_finite_weights_and_plain_merge_does_not_check():
    base, layer = _mask_layer()
    with torch.no_grad():
        base.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaNs detected in the merged weights of adapter\(s\) \['default'\]"):
        layer.merge(safe_merge=True)
    assert not layer.merged
    layer.merge()  # not safe: no check
    assert layer.merged
    layer.unmerge()
    with torch.no_grad():
        base.weight[0, 0] = 1.0
    layer.merge(safe_merge=True)  # finite: merges
    assert layer.merged


def test_loading_rebuilds_missing_scores_from_bits_for_every_adapter():
    _, src = _two_masks()
    sd = src.state_dict()
    del sd["amt_mask_bits.default"], sd["amt_scores.default"], sd["amt_scores.other"]
    _, dst = _two_masks()
    with torch.no_grad():
        dst.amt_scores["other"].fill_(0.5)
    dst.load_state_dict(sd, strict=False)  # the first adapter has no bits: skipped, the next one still rebuilt
    want = torch.full((4, 6), 0.0)  # off = t - (init - t) = 0.005 - (0.01 - 0.005)
    want[:, :2] = 0.01
    torch.testing.assert_close(dst.amt_scores["other"].detach(), want, rtol=0, atol=1e-9)


def test_stored_scores_exactly_at_the_threshold_agree_with_a_zero_bit():
    _, src = _mask_layer()
    with torch.no_grad():
        src.amt_scores["default"][0, 0] = 0.005
    sd = src.state_dict()
    _, dst = _mask_layer()
    dst.load_state_dict(sd)  # 0.005 > 0.005 is False, as is the stored bit
    assert dst.masked_count("default") == (1, 24)
    sd["amt_scores.default"][0, 1] = 0.0  # now scores and bits disagree
    parent = nn.ModuleDict({"blockX": MaskTuningLayer(KwLinear(6, 4), "default")})
    with pytest.raises(ValueError, match=r"^blockX: the stored scores and the stored bit-packed mask of adapter "
                                         r"'default' disagree"):
        parent.load_state_dict({f"blockX.{k}": v for k, v in sd.items()}, strict=False)


# ------------------------------------------------------------------------------------------------ seg_adapter (VLSM)

from adaptune.methods.seg_adapter.layer import (  # noqa: E402
    MERGE_ERROR,
    Bottleneck,
    ConditioningAdapterLayer,
    InputAdapterLayer,
    OutputAdapterLayer,
)


def _bottleneck_ref(b: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(b[2](torch.relu(b[0](x))))


def test_bottleneck_shape_init_and_dtype_round_trip():
    torch.manual_seed(0)
    b = Bottleneck(64, 32, init_scale=0.5)
    assert (b[0].in_features, b[0].out_features, b[2].in_features, b[2].out_features) == (64, 32, 32, 64)
    assert isinstance(b[1], nn.ReLU) and isinstance(b[3], nn.ReLU)
    assert b[2].weight.std().item() == pytest.approx(0.5, rel=0.1)
    assert torch.count_nonzero(b[2].bias) == 0
    assert Bottleneck(8, 2, 5)[2].out_features == 5
    assert Bottleneck(8, 2)[2].weight.abs().max().item() < 0.01  # default init_scale 1e-3
    x = torch.randn(3, 64).to(torch.bfloat16)
    out = b(x)  # computes in the bottleneck's fp32, returns the input's bf16
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, _bottleneck_ref(b, x.float()).to(torch.bfloat16), rtol=0, atol=0)
    assert (b(torch.randn(5, 64)) >= 0).all()  # ReLU after the up-projection too


class TupleBlock(nn.Module):
    def __init__(self, d=4, as_tuple=True):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.as_tuple = as_tuple

    def forward(self, h, mult=1.0):
        out = self.lin(h) * mult
        return (out, "attn", 3) if self.as_tuple else out


@pytest.mark.parametrize("as_tuple", [True, False])
def test_output_adapter_adds_the_bottleneck_of_the_output_and_is_exact_at_zero(as_tuple):
    torch.manual_seed(0)
    base = TupleBlock(as_tuple=as_tuple).requires_grad_(False)
    layer = OutputAdapterLayer(base, "default", 4, 2, init_scale=0.5)
    h = torch.randn(2, 3, 4)
    full = base(h, mult=2.0)
    hb = full[0] if as_tuple else full
    a = layer.vlsm_adapter["default"]
    with torch.no_grad():
        a[2].bias.fill_(0.3)  # a bottleneck output that is surely non-zero
    out = layer(h, mult=2.0)
    got = out[0] if as_tuple else out
    torch.testing.assert_close(got, hb + _bottleneck_ref(a, hb), rtol=0, atol=0)
    assert not torch.equal(got, hb)
    if as_tuple:
        assert out[1:] == ("attn", 3)
    with torch.no_grad():
        a[2].weight.zero_()
        a[2].bias.zero_()
    out0 = layer(h, mult=2.0)
    torch.testing.assert_close(out0[0] if as_tuple else out0, hb, rtol=0, atol=0)  # zero up-projection: identity
    layer.enable_adapters(False)
    outd = layer(h, mult=2.0)
    assert torch.equal(outd[0] if as_tuple else outd, hb)


def test_output_adapters_apply_in_turn_and_input_adapter_feeds_the_base():
    torch.manual_seed(0)
    base = TupleBlock(as_tuple=False).requires_grad_(False)
    layer = OutputAdapterLayer(base, "a", 4, 2, init_scale=0.5)
    layer.update_layer("b", 4, 2, init_scale=0.5)
    layer.set_adapter(["a", "b"])
    h = torch.randn(2, 4)
    y = base(h)
    y = y + _bottleneck_ref(layer.vlsm_adapter["a"], y)
    y = y + _bottleneck_ref(layer.vlsm_adapter["b"], y)
    torch.testing.assert_close(layer(h), y, rtol=0, atol=0)
    base2 = TupleBlock(as_tuple=False).requires_grad_(False)
    inp = InputAdapterLayer(base2, "default", 4, 2, init_scale=0.5)
    x = torch.randn(2, 4)
    a = inp.vlsm_adapter["default"]
    torch.testing.assert_close(inp(x, mult=3.0), base2(x + _bottleneck_ref(a, x), mult=3.0), rtol=0, atol=0)
    inp.enable_adapters(False)
    assert torch.equal(inp(x, mult=3.0), base2(x, mult=3.0))


def test_seg_adapters_follow_the_base_dtype_freeze_in_inference_mode_and_refuse_to_merge():
    base = TupleBlock().double()
    layer = OutputAdapterLayer(base, "default", 4, 2, init_scale=0.1)
    assert layer.vlsm_adapter["default"][0].weight.dtype == torch.float64
    assert layer.vlsm_adapter["default"][0].weight.requires_grad
    frozen = OutputAdapterLayer(TupleBlock(), "default", 4, 2, init_scale=0.1, inference_mode=True)
    assert not frozen.vlsm_adapter["default"][0].weight.requires_grad
    frozen.update_layer("default", 4, 2, 0.1, inference_mode=False)
    assert frozen.vlsm_adapter["default"][0].weight.requires_grad
    cond = ConditioningAdapterLayer(nn.Linear(6, 4).double(), "default", 2, 3, 2, 0.1)
    assert cond.vlsm_text["default"][1][0].weight.dtype == torch.float64
    assert cond.vlsm_conditioning["default"][0].weight.dtype == torch.float64
    frozen_c = ConditioningAdapterLayer(nn.Linear(6, 4), "default", 2, 3, 2, 0.1, inference_mode=True)
    assert not any(p.requires_grad for p in frozen_c.vlsm_text.parameters())
    assert not any(p.requires_grad for p in frozen_c.vlsm_conditioning.parameters())
    nothing = OutputAdapterLayer(nn.ReLU(), "default", 4, 2, init_scale=0.1)  # a module without weights: untouched
    assert nothing.vlsm_adapter["default"][0].weight.dtype == torch.float32
    for l_ in (layer, cond):
        assert repr(l_).startswith("seg_adapter.")
        with pytest.raises(NotImplementedError) as err:
            l_.merge()
        assert str(err.value) == MERGE_ERROR
        with pytest.raises(NotImplementedError) as err:
            l_.unmerge()
        assert str(err.value) == MERGE_ERROR


def test_conditioning_adapter_adds_text_states_then_conditions():
    torch.manual_seed(0)
    proj = nn.Linear(6, 4).requires_grad_(False)
    layer = ConditioningAdapterLayer(proj, "default", 2, 3, 2, init_scale=0.5)
    assert len(layer.vlsm_text["default"]) == 2 and layer.wants_text_states
    pooled, states = torch.randn(2, 6), [torch.randn(2, 6), torch.randn(2, 6)]
    t0, t1 = layer.vlsm_text["default"]
    c = proj(pooled) + _bottleneck_ref(t0, states[0]) + _bottleneck_ref(t1, states[1])
    c = c + _bottleneck_ref(layer.vlsm_conditioning["default"], c)
    torch.testing.assert_close(layer(pooled, states), c, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="need the end-of-text states of the extract layers"):
        layer(pooled)
    layer.enable_adapters(False)
    assert not layer.wants_text_states
    assert torch.equal(layer(pooled), proj(pooled))
    only_vlc = ConditioningAdapterLayer(proj, "default", 0, 3, 2, init_scale=0.5)
    assert "default" not in only_vlc.vlsm_text and not only_vlc.wants_text_states
    c = proj(pooled)
    torch.testing.assert_close(only_vlc(pooled), c + _bottleneck_ref(only_vlc.vlsm_conditioning["default"], c))
    only_text = ConditioningAdapterLayer(proj, "default", 1, 3, None, init_scale=0.5)
    assert "default" not in only_text.vlsm_conditioning
    torch.testing.assert_close(only_text(pooled, states[:1]),
                               proj(pooled) + _bottleneck_ref(only_text.vlsm_text["default"][0], states[0]))


# ------------------------------------------------------------------------------------------------ flex_projector (TokenFLEX)

import torch.nn.functional as F  # noqa: E402

from adaptune.budget.grid import BudgetError  # noqa: E402
from adaptune.methods.flex_projector.layer import FlexProjector, FlexProjectorLayer, pool_grid  # noqa: E402


def test_pool_grid_averages_exact_multiples_and_resizes_up_otherwise():
    torch.manual_seed(0)
    g = torch.randn(1, 2, 4, 6)
    torch.testing.assert_close(pool_grid(g, 2, 3), F.avg_pool2d(g, (2, 2)), rtol=0, atol=0)
    torch.testing.assert_close(pool_grid(g, 4, 6), g, rtol=0, atol=0)
    up = F.interpolate(g, size=(6, 8), mode="bilinear", align_corners=False)  # ceil(4/3)*3, ceil(6/4)*4
    torch.testing.assert_close(pool_grid(g, 3, 4), F.avg_pool2d(up, (2, 2)), rtol=0, atol=0)
    up = F.interpolate(g, size=(5, 6), mode="bilinear", align_corners=False)  # only the height is not a multiple
    torch.testing.assert_close(pool_grid(g, 5, 3), F.avg_pool2d(up, (1, 2)), rtol=0, atol=0)


def test_flex_projector_is_norm_then_swiglu_row_by_row():
    torch.manual_seed(0)
    p = FlexProjector(4, 5)
    assert (p.gate.out_features, p.up.out_features, p.down.in_features, p.down.out_features) == (12, 12, 12, 5)
    assert FlexProjector(4, 5, hidden_mult=2).gate.out_features == 8
    g = torch.randn(2, 4, 2, 3)
    t = p.norm(g.flatten(2).transpose(1, 2))  # (B, 6, 4): row 0 then row 1
    torch.testing.assert_close(p(g, 2, 3), p.down(F.silu(p.gate(t)) * p.up(t)), rtol=0, atol=0)


class ToyProjector(nn.Module):
    def __init__(self, d=4, out=3, dtype=torch.float32):
        super().__init__()
        self.lin = nn.Linear(d, out, dtype=dtype)
        self.extra = "toy"

    def forward(self, x, scale=1.0):
        return self.lin(x) * scale


def _flex_layer(divisor=1, dtype=torch.float32):
    torch.manual_seed(0)
    base = ToyProjector(dtype=dtype).requires_grad_(False)
    return base, FlexProjectorLayer(base, "default", 4, 3, 2, default_divisor=divisor)


@pytest.mark.parametrize("prefix", [0, 1])
def test_flex_layer_reads_the_patch_grid_after_an_optional_cls_row_and_pools_to_the_budget(prefix):
    base, layer = _flex_layer()
    feats = torch.randn(2, prefix + 16, 4)
    layer._placeholders = 2 * 4  # 4 tokens per image: a 2x2 grid of the 4x4 patches
    out = layer(feats)
    proj = layer.flex_projector["default"]
    grid = feats[:, prefix:].transpose(1, 2).reshape(2, 4, 4, 4)
    torch.testing.assert_close(out, proj(grid, 2, 2), rtol=0, atol=0)
    layer._placeholders = 2 * 8  # 8 tokens per image: 2x4 on a square grid
    assert layer(feats).shape == (2, 8, 3)


def test_flex_layer_default_budget_errors_and_disabled_path():
    base, layer = _flex_layer(divisor=4)
    feats = torch.randn(2, 16, 4)
    assert layer(feats).shape == (2, 4, 3)  # no placeholder count: 16 patches / 4
    _, one = _flex_layer(divisor=64)
    assert one(feats).shape == (2, 1, 3)  # at least one token
    with pytest.raises(ValueError, match="needs a square patch grid from the vision tower, got 15 tokens per image"):
        layer(torch.randn(2, 15, 4))
    layer._placeholders = 9
    with pytest.raises(BudgetError, match="9 image placeholder tokens cannot be split evenly over 2 images"):
        layer(feats)
    layer.enable_adapters(False)
    with pytest.raises(ValueError, match="the input has 9 image placeholder tokens for 2 image"):
        layer(feats)
    layer._placeholders = 2 * 4  # the base projector's own count (16 // 4 per image): fine
    assert torch.equal(layer(feats, scale=2.0), base(feats, scale=2.0))
    layer._placeholders = None
    assert torch.equal(layer(feats, scale=3.0), base(feats, scale=3.0))


def test_flex_layer_dtype_device_active_adapters_merge_and_attributes():
    base, layer = _flex_layer(dtype=torch.float64)
    assert layer.flex_projector["default"].down.weight.dtype == torch.float64
    layer.flex_projector["default"].float()  # PEFT's fp32 adapter on a wider base: computes in fp32, returns fp64
    assert layer(torch.randn(1, 16, 4, dtype=torch.float64)).dtype == torch.float64
    ints = ToyProjector()
    ints.lin.weight = nn.Parameter(torch.ones(3, 4, dtype=torch.int64), requires_grad=False)
    assert FlexProjectorLayer(ints, "default", 4, 3, 2).flex_projector["default"].down.weight.dtype == torch.float32
    bare = FlexProjectorLayer(nn.Identity(), "default", 4, 3, 2)  # no parameters at all
    assert bare.flex_projector["default"].down.weight.dtype == torch.float32
    with torch.device("meta"):
        meta_base = ToyProjector()
    assert FlexProjectorLayer(meta_base, "default", 4, 3, 2).flex_projector["default"].down.weight.is_meta
    assert layer.extra == "toy" and layer.default_divisor == 1
    assert not hasattr(FlexProjectorLayer.__new__(FlexProjectorLayer), "flex_projector")
    layer.update_layer("second", 4, 3, 2)
    assert layer.flex_projector["second"].gate.out_features == 8
    layer.set_adapter(["default", "second"])
    with pytest.raises(ValueError, match="only one adapter can be active"):
        layer(torch.randn(1, 16, 4, dtype=torch.float64))
    layer.set_adapter("missing")
    feats = torch.randn(1, 16, 4, dtype=torch.float64)
    assert torch.equal(layer(feats), base(feats))
    with pytest.raises(NotImplementedError, match=r"^TokenFLEX cannot be merged: it replaces the projector .* "
                                                  r"Keep the adapter loaded, or use unload\(\) to drop it\.$"):
        layer.merge()
    assert layer.unmerge() is None


def test_seg_adapters_defaults_init_scale_and_device():
    torch.manual_seed(0)
    out_l = OutputAdapterLayer(TupleBlock(d=64), "default", 64, 32, init_scale=0.5)
    assert out_l.vlsm_adapter["default"][2].weight.std().item() == pytest.approx(0.5, rel=0.1)
    out_l.update_layer("second", 64, 32, 0.25)  # trainable by default (then made inactive by set_adapter)
    out_l.set_adapter("second")
    assert out_l.vlsm_adapter["second"][2].weight.std().item() == pytest.approx(0.25, rel=0.1)
    out_l.update_layer("second", 64, 32, 0.25)
    assert out_l.vlsm_adapter["second"][0].weight.requires_grad
    cond = ConditioningAdapterLayer(nn.Linear(64, 64), "default", 1, 32, 32, init_scale=0.5)
    assert cond.vlsm_text["default"][0][2].weight.std().item() == pytest.approx(0.5, rel=0.1)
    assert cond.vlsm_conditioning["default"][2].weight.std().item() == pytest.approx(0.5, rel=0.1)
    assert all(p.requires_grad for p in cond.vlsm_text.parameters())
    cond.update_layer("default", 1, 32, 32, 0.5)
    assert all(p.requires_grad for p in cond.vlsm_conditioning.parameters())
    with torch.device("meta"):
        meta_block, meta_proj = TupleBlock(), nn.Linear(6, 4)
    assert OutputAdapterLayer(meta_block, "default", 4, 2, 0.1).vlsm_adapter["default"][0].weight.is_meta
    meta_cond = ConditioningAdapterLayer(meta_proj, "default", 1, 2, 2, 0.1)
    assert meta_cond.vlsm_text["default"][0][0].weight.is_meta
    assert meta_cond.vlsm_conditioning["default"][0].weight.is_meta


class PosBlock(nn.Module):
    def forward(self, x, shift=0.0, scale=1.0):
        return x * scale + shift


def test_input_adapter_passes_positional_arguments_and_text_error_message():
    inp = InputAdapterLayer(PosBlock(), "default", 4, 2, init_scale=0.5)
    x = torch.randn(2, 4)
    a = inp.vlsm_adapter["default"]
    torch.testing.assert_close(inp(x, 1.0, scale=2.0), (x + _bottleneck_ref(a, x)) * 2.0 + 1.0, rtol=0, atol=0)
    cond = ConditioningAdapterLayer(nn.Linear(6, 4), "default", 1, 3, None, 0.1)
    with pytest.raises(ValueError) as err:
        cond(torch.randn(1, 6))
    assert str(err.value) == ("the shallow text adapters need the end-of-text states of the extract layers; call the "
                              "CLIPSeg model itself (its adapted forward passes them)")


def test_flex_layer_small_paths():
    base = ToyProjector()
    assert FlexProjectorLayer(base, "default", 4, 3, 2).default_divisor == 1
    feats = torch.randn(1, 16, 4)
    layer = FlexProjectorLayer(PosProjector(), "default", 4, 4, 2)
    layer.enable_adapters(False)
    assert torch.equal(layer(feats, 1.0, scale=2.0), feats * 2.0 + 1.0)  # positional and keyword arguments reach it
    layer._placeholders = 3
    with pytest.raises(ValueError) as err:
        layer(feats)
    assert str(err.value) == ("the input has 3 image placeholder tokens for 1 image(s), but the base projector (adapter "
                              "disabled or merged) only produces its fixed count; flex-budget inputs need the "
                              "TokenFLEX adapter enabled")
    half = FlexProjectorLayer.__new__(FlexProjectorLayer)
    nn.Module.__init__(half)
    assert not hasattr(half, "base_layer")  # AttributeError, not a recursion through __getattr__
    other = ToyProjector()
    other.flex_projector = "not mine"
    half.base_layer = other
    assert not hasattr(half, "flex_projector")


class PosProjector(nn.Module):
    def forward(self, x, shift=0.0, scale=1.0):
        return x * scale + shift


# ---- the Qwen-VL vision tower layer on a toy tower


class _Cfg:
    spatial_merge_size = 2
    hidden_size = 4
    out_hidden_size = 3


class _Out:
    pass


class ToyTower(nn.Module):
    """Like a Qwen-VL vision tower: patches (N, d) -> merger (4 patches -> 1 token) and deepstack mergers on taps."""

    def __init__(self, windowed=False):
        super().__init__()
        self.config = _Cfg()
        self.spatial_merge_size, self.window_size, self.patch_size = 2, 56, 14
        self.lin = nn.Linear(4, 4, dtype=torch.float64)
        self.merger = nn.Sequential(nn.Unflatten(0, (-1, 4)), nn.Flatten(1), nn.Linear(16, 3, dtype=torch.float64))
        self.deepstack_merger_list = nn.ModuleList(
            nn.Sequential(nn.Unflatten(0, (-1, 4)), nn.Flatten(1), nn.Linear(16, 3, dtype=torch.float64))
            for _ in range(2))
        self.windowed = windowed

    def forward(self, hidden_states, grid_thw=None, scale=1.0):
        h = self.lin(hidden_states) * scale
        if self.windowed:
            from transformers.vision_utils import get_vision_window_index
            index, _ = get_vision_window_index(grid_thw, spatial_merge_size=2, window_size=56, patch_size=14)
            h = h.reshape(-1, 4, 4)[index].reshape(-1, 4)
        out = _Out()
        out.pooler_output = self.merger(h)
        out.deepstack_features = [m(h * (k + 2)) for k, m in enumerate(self.deepstack_merger_list)]
        out.grid = grid_thw
        return out


def _tower_expected(layer, tower, hidden, real, lang, scale, deepstack="pool"):
    from adaptune.methods.flex_projector.layer import grid_to_merge_order, merge_order_to_grid

    h_all = tower.lin(hidden) * scale
    proj = layer.flex_projector["default"]
    tokens, taps, offset = [], [[], []], 0
    for (_, height, width), (_, lh, lw) in zip(real.tolist(), lang.tolist()):
        n, h, w = height * width, lh // 2, lw // 2
        grid = merge_order_to_grid(h_all[offset:offset + n], height, width, 2)
        tokens.append(proj(grid[None].float(), h, w)[0].double())
        for k, m in enumerate(tower.deepstack_merger_list):
            g = merge_order_to_grid(h_all[offset:offset + n] * (k + 2), height, width, 2)
            pooled = pool_grid(g[None], 2 * h, 2 * w)[0]
            taps[k].append(torch.zeros(h * w, 3, dtype=torch.float64) if deepstack == "zero"
                           else m(grid_to_merge_order(pooled, 2).contiguous()))
        offset += n
    return torch.cat(tokens), [torch.cat(t) for t in taps]


@pytest.mark.parametrize("deepstack", ["pool", "zero"])
def test_flex_tower_layer_projects_each_image_to_its_language_grid(deepstack):
    from adaptune.methods.flex_projector.layer import FlexVisionTowerLayer

    torch.manual_seed(0)
    tower = ToyTower().requires_grad_(False)
    kw = {} if deepstack == "pool" else {"deepstack": "zero"}
    layer = FlexVisionTowerLayer(tower, "default", 2, **kw)
    layer.flex_projector["default"].float()  # PEFT's fp32 adapter on a wider (fp64) tower
    real = torch.tensor([[1, 4, 4], [1, 8, 4], [1, 4, 8]])  # three images of different sizes
    lang = torch.tensor([[1, 2, 2], [1, 4, 2], [1, 2, 4]])
    hidden = torch.randn(16 + 32 + 32, 4, dtype=torch.float64)
    layer._vision_grid = real
    out = layer(hidden, grid_thw=lang, scale=2.0)
    want, want_taps = _tower_expected(layer, tower, hidden, real, lang, 2.0, deepstack)
    assert out.pooler_output.dtype == torch.float64
    torch.testing.assert_close(out.pooler_output, want)
    for got, exp in zip(out.deepstack_features, want_taps):
        torch.testing.assert_close(got, exp)
    assert torch.equal(out.grid, real)  # the tower ran on the real patch grid
    assert tower.merger is not None and not type(tower.merger).__name__.startswith("_Capture")  # restored
    with pytest.raises(ValueError, match="pixel_values hold 79 patches .* a TokenFLEX batch"):
        layer(hidden[:-1], grid_thw=lang)


def test_flex_tower_layer_windowed_order_and_default_grid():
    from adaptune.methods.flex_projector.layer import FlexVisionTowerLayer

    torch.manual_seed(0)
    tower = ToyTower(windowed=True).requires_grad_(False)
    layer = FlexVisionTowerLayer(tower, "default", 2, windowed=True)
    layer.flex_projector["default"].float()
    real = torch.tensor([[1, 8, 12]])
    hidden = torch.randn(96, 4, dtype=torch.float64)
    out = layer(hidden, grid_thw=real)  # nothing stashed: the grid is taken as real, default budget
    want, _ = _tower_expected(layer, tower, hidden, real, real, 1.0)
    torch.testing.assert_close(out.pooler_output, want)
    assert out.pooler_output.shape == (24, 3)


def test_flex_tower_layer_disabled_calls_the_tower_and_refuses_flex_batches():
    from adaptune.methods.flex_projector.layer import FlexVisionTowerLayer

    torch.manual_seed(0)
    tower = ToyTower().requires_grad_(False)
    layer = FlexVisionTowerLayer(tower, "default", 2)
    assert layer.deepstack == "pool" and layer.windowed is False
    layer.enable_adapters(False)
    real = torch.tensor([[1, 4, 4]])
    hidden = torch.randn(16, 4, dtype=torch.float64)
    out = layer(hidden, grid_thw=real, scale=3.0)  # nothing stashed
    torch.testing.assert_close(out.pooler_output, tower.merger(tower.lin(hidden) * 3.0), rtol=0, atol=0)
    assert torch.equal(out.grid, real)
    layer._vision_grid = real.clone()
    assert layer(hidden, grid_thw=real).pooler_output.shape == (4, 3)  # same grid: fine
    layer._vision_grid = torch.tensor([[1, 8, 8]])
    with pytest.raises(ValueError) as err:
        layer(hidden, grid_thw=real)
    assert str(err.value) == ("this batch was prepared for a TokenFLEX budget (vision_grid_thw differs from "
                              "image_grid_thw) but the adapter is disabled or merged; the base merger only produces "
                              "its fixed token count")
