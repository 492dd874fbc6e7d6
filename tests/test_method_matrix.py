"""The shared matrix: every registered adaptune adapter method on every family it supports.

A method joins by registering (`adaptune.methods._peft_ext.register_method`); nothing here lists methods by name.
Checks: forward, backward, a few training steps change the adapter and nothing else, `disable_adapter()` gives the
base outputs exactly, save/load identity, trainable-parameter count. The rest of the PEFT contract (bf16 / fp16 bases,
gradient checkpointing, several adapters, reloads, unload, compile, config JSON) is `tests/test_peft_contract.py`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model

import adaptune
from adaptune.models import build_tiny, get_family
from adaptune.models.inputs import example_batch, main_output

CASES = [(name, fam) for name, info in adaptune.METHODS.items() for fam in info.families]


def _setup(method: str, family: str):
    info = adaptune.METHODS.get(method)
    spec = get_family(family)
    model, processor = build_tiny(family, seed=0)
    model.requires_grad_(False)  # frozen like a real base (SigLIP's attention pooling takes another path otherwise)
    batch = example_batch(spec, processor)
    with torch.no_grad():
        base_out = main_output(spec, model(**batch)).clone()
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    peft_model = get_peft_model(model, info.test_config(family, model))
    return info, spec, processor, batch, base_out, base_state, peft_model


@pytest.mark.parametrize("method,family", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_method_matrix(method, family, tmp_path):
    info, spec, processor, batch, base_out, base_state, peft_model = _setup(method, family)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    n_trainable = sum(p.numel() for p in trainable.values())
    n_total = sum(p.numel() for p in peft_model.parameters())
    print(f"{method}/{family}: {n_trainable} trainable of {n_total} parameters")
    assert 0 < n_trainable < n_total

    # forward + backward reach every trainable tensor
    peft_model.train()
    out = main_output(spec, peft_model(**batch))
    assert out.shape == base_out.shape
    out.float().pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())

    # a few steps: adapter changes, base weights do not
    before = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.Adam(trainable.values(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        main_output(spec, peft_model(**batch)).float().pow(2).mean().backward()
        opt.step()
    assert any(not torch.equal(before[n], p) for n, p in trainable.items()), "adapter weights did not change"
    peft_model.eval()
    with peft_model.disable_adapter(), torch.no_grad():
        disabled = main_output(spec, peft_model(**batch))
    torch.testing.assert_close(disabled, base_out, rtol=0, atol=0)
    base_now = peft_model.get_base_model().state_dict()
    for key, value in base_state.items():
        if key in base_now:
            assert torch.equal(base_now[key], value), f"base weight {key} changed"

    # save / load identity
    with torch.no_grad():
        adapted = main_output(spec, peft_model(**batch)).clone()
    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    fresh, _ = build_tiny(family, seed=0)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(main_output(spec, reloaded(**batch)), adapted, rtol=0, atol=0)


@pytest.mark.parametrize("method", list(adaptune.METHODS), ids=list(adaptune.METHODS))
def test_method_merge_contract(method):
    """`merge_and_unload()` either reproduces the adapted outputs or refuses with a clear message."""
    info = adaptune.METHODS.get(method)
    family = info.families[0]
    _, spec, _, batch, _, _, peft_model = _setup(method, family)
    peft_model.eval()
    with torch.no_grad():
        adapted = main_output(spec, peft_model(**batch)).clone()
    if info.mergeable:
        merged = copy.deepcopy(peft_model).merge_and_unload()
        with torch.no_grad():
            torch.testing.assert_close(main_output(spec, merged(**batch)), adapted, rtol=1e-5, atol=1e-5)
    else:
        with pytest.raises((NotImplementedError, ValueError, TypeError), match=r"\w+"):
            peft_model.merge_and_unload()
