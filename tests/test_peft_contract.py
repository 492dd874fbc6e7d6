"""The PEFT contract, behaviour by behaviour, for every adaptune method on every family it claims (LoRA as control).

Each cell uses PEFT's public API the way a user does: a base loaded in bf16 / fp16 and then wrapped, gradient
checkpointing in both modes, several adapters (add, switch, delete, save, `load_adapter`), `is_trainable` reloads,
state-dict round trips, `disable_adapter()`, merge / unmerge / unload, `torch.compile` (slow) and the config's JSON
round trip. A method joins by registering (`adaptune.methods._peft_ext.register_method`); what it cannot support it
must refuse up front with a clear error (tested here too).

Tiny models are built once per family and deep-copied per cell; a dtype the plain base model cannot run on this CPU is
skipped with the base model's own error, found by trying it.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict, \
    set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

import adaptune
from adaptune.models import build_tiny, get_family
from adaptune.models.inputs import example_batch, main_output

# ----------------------------------------------------------------------------------------------------- the cells


@dataclass(frozen=True)
class Method:
    name: str
    families: tuple[str, ...]
    config: Callable[[str, Any], PeftConfig]
    mergeable: bool


def _lora_config(family: str, model: Any) -> LoraConfig:
    # SigLIP's pooling head is an nn.MultiheadAttention, which reads `out_proj.weight` directly (a LoRA there only
    # acts once merged); leave it out of the control
    exclude = r".*head\.attention\.out_proj" if family == "siglip" else None
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", exclude_modules=exclude)


def _seg_shallow_config(family: str, model: Any) -> PeftConfig:
    from adaptune.methods.seg_adapter import SegAdapterConfig

    return SegAdapterConfig(variant="shallow", modality="VLC", r=32)  # tiny width (the default 512 is for real ones)


LORA = Method("lora", tuple(adaptune.FAMILIES), _lora_config, mergeable=True)
# variants whose layers differ from the method's test config (seg_adapter shallow: decoder inputs + text states)
VARIANTS = [Method("seg_adapter.shallow", ("clipseg",), _seg_shallow_config, mergeable=False)]
METHODS = [LORA] + [Method(name, info.families, info.test_config, info.mergeable)
                    for name, info in adaptune.METHODS.items()] + VARIANTS
BY_NAME = {m.name: m for m in METHODS}
PAIRS = [(m.name, fam) for m in METHODS for fam in m.families]
PAIR_IDS = [f"{m}-{f}" for m, f in PAIRS]
pairs = pytest.mark.parametrize("method,family", PAIRS, ids=PAIR_IDS)


@functools.lru_cache(maxsize=None)
def _tiny(family: str):
    model, processor = build_tiny(family, seed=0)
    model.requires_grad_(False)  # frozen like a real base
    batch = example_batch(get_family(family), processor)
    return model, processor, batch


def _base(family: str, dtype: torch.dtype | None = None):
    model, _, batch = _tiny(family)
    model = copy.deepcopy(model)
    batch = dict(batch)
    if dtype is not None:
        model.to(dtype)
        batch = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    return model, batch


def _out(family: str, model, batch) -> torch.Tensor:
    return main_output(get_family(family), model(**batch))


def _wrap(method: str, family: str, dtype: torch.dtype | None = None, **kwargs):
    model, batch = _base(family, dtype)
    return get_peft_model(model, BY_NAME[method].config(family, model), **kwargs), batch


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _perturb(model, seed: int) -> None:
    """Move the active adapter's weights away from their (often identity) initialisation, deterministically."""
    gen = torch.Generator().manual_seed(seed)
    for _, p in sorted(_trainable(model).items()):
        p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.05)


def _eval_out(family, model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return _out(family, model, batch).clone()


def _step(family, model, batch, lr: float = 1e-2) -> dict[str, torch.Tensor]:
    """One optimiser step on the trainable weights; returns them as they were before."""
    params = _trainable(model)
    assert params, "nothing is trainable"
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD(params.values(), lr=lr)
    model.train()
    opt.zero_grad()
    _out(family, model, batch).float().pow(2).mean().backward()
    opt.step()
    return before


# ------------------------------------------------------------------------------------------------------ dtypes


def _base_runs_in(family: str, dtype: torch.dtype) -> str | None:
    """None when the plain base model runs forward + backward in `dtype` here; otherwise why not."""
    model, batch = _base(family, dtype)
    model.requires_grad_(True)
    try:
        _out(family, model, batch).float().pow(2).mean().backward()
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        return f"the plain {family} base fails in {dtype} on this machine: {str(exc).splitlines()[0][:160]}"
    return None


DTYPE_CASES = [("bf16", torch.bfloat16, True), ("fp16", torch.float16, True), ("bf16-noautocast", torch.bfloat16, False)]


@pairs
@pytest.mark.parametrize("label,dtype,autocast", DTYPE_CASES, ids=[c[0] for c in DTYPE_CASES])
def test_low_precision_base(method, family, label, dtype, autocast):
    """Load the base in bf16 / fp16, wrap it, run forward and a training step in that dtype."""
    why = _base_runs_in(family, dtype)
    if why:
        pytest.skip(why)
    peft_model, batch = _wrap(method, family, dtype, autocast_adapter_dtype=autocast)
    out = _eval_out(family, peft_model, batch)
    assert out.dtype == dtype, f"output is {out.dtype}, the base runs in {dtype}"
    assert torch.isfinite(out.float()).all()
    before = _step(family, peft_model, batch)
    changed = [n for n, p in _trainable(peft_model).items() if not torch.equal(before[n], p)]
    assert changed, "the training step changed no adapter weight"
    assert all(torch.isfinite(p.float()).all() for p in _trainable(peft_model).values())
    for name, module in peft_model.named_modules():  # the frozen base stays in the dtype it was loaded in
        if isinstance(module, BaseTunerLayer):
            base_params = [p for p in module.get_base_layer().parameters() if p.is_floating_point()]
            assert all(p.dtype == dtype for p in base_params), f"{name}: base weights changed dtype"


# ----------------------------------------------------------------------------------------- gradient checkpointing


def _grads(family, model, batch) -> dict[str, torch.Tensor | None]:
    model.train()
    model.zero_grad(set_to_none=True)
    _out(family, model, batch).float().pow(2).mean().backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in _trainable(model).items()}


@pairs
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing(method, family, reentrant):
    """Gradients with gradient checkpointing equal the gradients without it, in both checkpointing modes."""
    peft_model, batch = _wrap(method, family)
    base = peft_model.get_base_model()
    if not getattr(base, "supports_gradient_checkpointing", False):
        pytest.skip(f"{type(base).__name__} does not support gradient checkpointing")
    _perturb(peft_model, seed=1)
    reference = _grads(family, peft_model, batch)
    assert any(g is not None for g in reference.values())
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        # reentrant checkpointing only reaches weights inside a checkpointed block when the block's input requires
        # grad: the documented recipe for frozen embeddings (`enable_input_require_grads()` covers the text side only)
        peft_model.enable_input_require_grads()
        batch = {k: v.detach().requires_grad_(True) if torch.is_tensor(v) and v.is_floating_point() else v
                 for k, v in batch.items()}
    assert any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
    checkpointed = _grads(family, peft_model, batch)
    missing = [n for n, g in reference.items() if g is not None and checkpointed[n] is None]
    assert not missing, f"no gradient under checkpointing for {len(missing)} of {len(reference)}: {missing[:4]}"
    for name, grad in reference.items():
        if grad is not None:
            torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------ several adapters


@pairs
def test_two_adapters(method, family, tmp_path):
    """add, switch, switch back exactly, save both, load the second with `load_adapter`, delete."""
    peft_model, batch = _wrap(method, family)
    _perturb(peft_model, seed=1)
    first = _eval_out(family, peft_model, batch)
    names_before = set(dict(peft_model.named_parameters()))

    base_model = peft_model.get_base_model()
    peft_model.add_adapter("second", BY_NAME[method].config(family, base_model))
    peft_model.set_adapter("second")
    assert peft_model.active_adapter == "second"
    trainable = _trainable(peft_model)
    assert trainable and all("second" in n for n in trainable), "only the active adapter trains"
    _perturb(peft_model, seed=2)
    second = _eval_out(family, peft_model, batch)
    assert not torch.equal(first, second), "the second adapter gives the first one's outputs"

    peft_model.set_adapter("default")
    torch.testing.assert_close(_eval_out(family, peft_model, batch), first, rtol=0, atol=0)
    peft_model.set_adapter("second")
    torch.testing.assert_close(_eval_out(family, peft_model, batch), second, rtol=0, atol=0)

    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    assert (tmp_path / "second" / "adapter_model.safetensors").exists()
    fresh, _ = _base(family)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path)
    reloaded.load_adapter(tmp_path / "second", adapter_name="second")
    torch.testing.assert_close(_eval_out(family, reloaded, batch), first, rtol=0, atol=0)
    reloaded.set_adapter("second")
    torch.testing.assert_close(_eval_out(family, reloaded, batch), second, rtol=0, atol=0)

    peft_model.set_adapter("default")
    peft_model.delete_adapter("second")
    assert list(peft_model.peft_config) == ["default"]
    assert set(dict(peft_model.named_parameters())) == names_before, "delete_adapter left weights behind"
    torch.testing.assert_close(_eval_out(family, peft_model, batch), first, rtol=0, atol=0)


# --------------------------------------------------------------------------------- reload, state dict, disabling


@pairs
def test_trainable_reload(method, family, tmp_path):
    """`from_pretrained(..., is_trainable=True)` gives the same trainable weights, and they train."""
    peft_model, batch = _wrap(method, family)
    _perturb(peft_model, seed=1)
    expected = _eval_out(family, peft_model, batch)
    names = set(_trainable(peft_model))
    peft_model.save_pretrained(tmp_path)
    fresh, _ = _base(family)
    base_state = {k: v.clone() for k, v in fresh.state_dict().items()}
    reloaded = PeftModel.from_pretrained(fresh, tmp_path, is_trainable=True)
    assert set(_trainable(reloaded)) == names
    torch.testing.assert_close(_eval_out(family, reloaded, batch), expected, rtol=0, atol=0)
    before = _step(family, reloaded, batch)
    assert any(not torch.equal(before[n], p) for n, p in _trainable(reloaded).items())
    with reloaded.disable_adapter():
        base_now = reloaded.get_base_model().state_dict()
    for key, value in base_now.items():  # the frozen weights did not move
        original = base_state.get(key.replace(".base_layer", ""))
        if original is not None and original.shape == value.shape:
            assert torch.equal(original, value), key
    frozen = PeftModel.from_pretrained(_base(family)[0], tmp_path)
    assert not _trainable(frozen), "a plain from_pretrained must load for inference"


@pairs
def test_state_dict_round_trip(method, family):
    """`get_peft_model_state_dict` -> `set_peft_model_state_dict` on a fresh wrap reproduces the outputs."""
    peft_model, batch = _wrap(method, family)
    _perturb(peft_model, seed=1)
    expected = _eval_out(family, peft_model, batch)
    state = get_peft_model_state_dict(peft_model)
    assert state and all(torch.is_tensor(v) for v in state.values())
    other, _ = _wrap(method, family)
    result = set_peft_model_state_dict(other, state)
    unexpected = getattr(result, "unexpected_keys", [])
    assert not unexpected, unexpected[:4]
    torch.testing.assert_close(_eval_out(family, other, batch), expected, rtol=0, atol=0)
    again = get_peft_model_state_dict(other)
    assert set(again) == set(state)


@pairs
def test_disable_adapter_is_base(method, family):
    base, batch = _base(family)
    expected = _eval_out(family, base, batch)
    peft_model, _ = _wrap(method, family)
    _perturb(peft_model, seed=1)
    assert not torch.equal(_eval_out(family, peft_model, batch), expected), "the adapter changes nothing"
    with peft_model.disable_adapter():
        torch.testing.assert_close(_eval_out(family, peft_model, batch), expected, rtol=0, atol=0)
    assert not torch.equal(_eval_out(family, peft_model, batch), expected), "disable_adapter() did not re-enable"


# --------------------------------------------------------------------------------------- merge, unmerge, unload


@pairs
def test_merge_unmerge_unload(method, family):
    base, batch = _base(family)
    expected_base = _eval_out(family, base, batch)
    originals = {name: module for name, module in base.named_modules() if name}
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = get_peft_model(base, BY_NAME[method].config(family, base))
    _perturb(peft_model, seed=1)
    adapted = _eval_out(family, peft_model, batch)

    if BY_NAME[method].mergeable:
        peft_model.merge_adapter()
        torch.testing.assert_close(_eval_out(family, peft_model, batch), adapted, rtol=1e-4, atol=1e-5)
        peft_model.unmerge_adapter()
        torch.testing.assert_close(_eval_out(family, peft_model, batch), adapted, rtol=1e-4, atol=1e-5)
        merged = copy.deepcopy(peft_model).merge_and_unload()
        assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
        torch.testing.assert_close(_eval_out(family, merged, batch), adapted, rtol=1e-4, atol=1e-5)
    else:
        for call in (peft_model.merge_adapter, copy.deepcopy(peft_model).merge_and_unload):
            with pytest.raises((NotImplementedError, ValueError), match=r"cannot be merged"):
                call()
        torch.testing.assert_close(_eval_out(family, peft_model, batch), adapted, rtol=0, atol=0)

    unloaded = peft_model.unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in unloaded.modules())
    now = {name: module for name, module in unloaded.named_modules() if name}
    assert set(now) == set(originals)
    moved = [name for name, module in originals.items() if now[name] is not module]
    assert not moved, f"unload() did not put the original modules back: {moved[:4]}"
    assert type(unloaded).forward is type(base).forward and "forward" not in unloaded.__dict__
    state = unloaded.state_dict()
    assert set(state) == set(base_state)
    # merge + unmerge may leave float rounding in the weights (W + BA - BA); nothing else may change them
    tol = dict(rtol=1e-4, atol=1e-5) if BY_NAME[method].mergeable else dict(rtol=0, atol=0)
    for key, value in base_state.items():
        torch.testing.assert_close(state[key], value, **tol, msg=key)
    torch.testing.assert_close(_eval_out(family, unloaded, batch), expected_base, **tol)


# ---------------------------------------------------------------------------------------------------- config


@pairs
def test_config_json_round_trip(method, family, tmp_path):
    peft_model, _ = _wrap(method, family)
    config = peft_model.peft_config["default"]

    def as_json(cfg) -> dict:  # PEFT writes sets (resolved target modules) as lists
        return json.loads(json.dumps(cfg.to_dict(), default=lambda o: sorted(o) if isinstance(o, set) else str(o)))

    data = as_json(config)
    rebuilt = type(config)(**{k: v for k, v in data.items() if k not in ("peft_type", "auto_mapping")})
    assert as_json(rebuilt) == data
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is type(config)
    assert as_json(loaded) == data


# ---------------------------------------------------------------------------------------------------- compile


@pytest.mark.slow
@pairs
def test_torch_compile_forward(method, family):
    torch._dynamo.reset()
    peft_model, batch = _wrap(method, family)
    _perturb(peft_model, seed=1)
    expected = _eval_out(family, peft_model, batch)
    compiled = torch.compile(peft_model, backend="aot_eager")
    with torch.no_grad():
        out = _out(family, compiled, batch)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ failures and refusals by design

ADAPTUNE_FIRST = [(name, info.families[0]) for name, info in adaptune.METHODS.items()]


@pytest.mark.parametrize("method,family", ADAPTUNE_FIRST, ids=[m for m, _ in ADAPTUNE_FIRST])
def test_failed_add_adapter_leaves_nothing_behind(method, family, monkeypatch):
    """An injection that fails after every target got the new adapter rolls all of it back."""
    peft_model, batch = _wrap(method, family)
    _perturb(peft_model, seed=1)
    expected = _eval_out(family, peft_model, batch)
    names = set(dict(peft_model.named_parameters())) | set(dict(peft_model.named_buffers()))
    modules = {n: type(m) for n, m in peft_model.named_modules()}
    tuner_cls = type(peft_model.base_model)
    targets = len(peft_model.base_model.targeted_module_names)
    original = tuner_cls._create_and_replace
    calls = []

    def failing(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == targets:
            raise RuntimeError("injected failure")

    monkeypatch.setattr(tuner_cls, "_create_and_replace", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        peft_model.add_adapter("broken", BY_NAME[method].config(family, peft_model.get_base_model()))
    monkeypatch.undo()
    assert list(peft_model.peft_config) == ["default"]
    assert set(dict(peft_model.named_parameters())) | set(dict(peft_model.named_buffers())) == names
    assert {n: type(m) for n, m in peft_model.named_modules()} == modules
    torch.testing.assert_close(_eval_out(family, peft_model, batch), expected, rtol=0, atol=0)
    peft_model.add_adapter("broken", BY_NAME[method].config(family, peft_model.get_base_model()))  # the name is free


SINGLE_ACTIVE = [(m, f) for m, f in ADAPTUNE_FIRST if m in ("registers", "flex_projector")]


@pytest.mark.parametrize("method,family", SINGLE_ACTIVE, ids=[m for m, _ in SINGLE_ACTIVE])
def test_several_active_adapters_refused(method, family):
    """Refused by design: registers and TokenFLEX run one adapter per forward; activating two fails up front."""
    peft_model, batch = _wrap(method, family)
    peft_model.add_adapter("second", BY_NAME[method].config(family, peft_model.get_base_model()))
    with pytest.raises(ValueError, match=r"one active adapter at a time.*set_adapter\(name\)"):
        peft_model.base_model.set_adapter(["default", "second"])
    assert peft_model.active_adapters == ["default"]
    _eval_out(family, peft_model, batch)


def test_load_model_honours_dtype(tmp_path):
    from adaptune.models import load_model

    for dtype in (torch.bfloat16, "float16", "torch.bfloat16"):
        loaded = load_model("tiny:clip", dtype=dtype)
        want = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype.removeprefix("torch."))
        assert {p.dtype for p in loaded.model.parameters()} == {want}
    assert {p.dtype for p in load_model("tiny:clip").model.parameters()} == {torch.float32}
    assert {p.dtype for p in load_model("tiny:clip", dtype="auto").model.parameters()} == {torch.float32}
    saved = load_model("tiny:dinov2")
    saved.model.save_pretrained(tmp_path)
    saved.processor.save_pretrained(tmp_path)
    folder = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert {p.dtype for p in folder.model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="floating-point torch dtype"):
        load_model("tiny:clip", dtype="int8")
