"""PH-Reg tuner layers: register tokens in, register tokens out, and trainable copies of the unlocked weights.

- `RegisterEmbeddingLayer` wraps the ViT's embeddings module. It runs the original module with the unlocked
  parameters (patch-embedding conv, position embeddings) swapped for the adapter's trainable copies
  (`torch.func.functional_call`; the originals are never touched), then inserts R register tokens after the prefix
  tokens ([CLS] for CLIP / DINOv2, none for SigLIP). Registers get no positional embedding. Position does not matter
  otherwise: the blocks are permutation-equivariant, all positional information is added in the embeddings.
- `RegisterBlockLayer` wraps the last block the model reads (the ViT's last; on LLaVA the block of its
  `vision_feature_layer`): runs it (with its trainable copy when unlocked) and drops the register tokens from its
  output, so `last_hidden_state`, poolers and heads see the original shapes. Hidden states recorded
  for `output_hidden_states` (LLaVA's feature layer, CLIPSeg's extract layers) have the registers removed too.

With the adapter disabled both layers call the original module unchanged: outputs are exactly the base model's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.func import functional_call


class ParamBank(nn.Module):
    """Trainable copies of some parameters of a frozen module, keyed by their dotted names."""

    def __init__(self, module: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.params = nn.ParameterDict({
            name.replace(".", "__"): nn.Parameter(module.get_parameter(name).detach().clone()) for name in names
        })

    def overrides(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The copies keyed by dotted name, each cast (differentiably) to the dtype of the parameter it replaces: PEFT
        keeps adapter weights in fp32 on a bf16 / fp16 base (`autocast_adapter_dtype`), the base runs in its own."""
        out = {}
        for key, value in self.params.items():
            name = key.replace("__", ".")
            original = module.get_parameter(name)
            out[name] = value if value.dtype == original.dtype else value.to(original.dtype)
        return out


class _RegisterLayerMixin(BaseTunerLayer):
    adapter_layer_names: tuple[str, ...] = ("reg_unlocked",)
    other_param_names: tuple[str, ...] = ("reg_count",)

    def _init_common(self, base_layer: nn.Module, num_prefix: int) -> None:
        self.base_layer = base_layer
        self.num_prefix = num_prefix
        self.reg_unlocked = nn.ModuleDict()
        self.reg_count: dict[str, int] = {}
        self._disable_adapters = False
        self.merged_adapters = []

    def _active(self) -> str | None:
        if self.disable_adapters or self.merged:
            return None
        active = [a for a in self.active_adapters if a in self.reg_unlocked]
        if len(active) > 1:
            raise ValueError(f"PH-Reg supports one active adapter at a time, got {active}")
        return active[0] if active else None

    def _run_base(self, adapter: str, args: tuple, kwargs: dict) -> Any:
        base = self.base_layer
        overrides = self.reg_unlocked[adapter].overrides(base)
        if not overrides:
            return base(*args, **kwargs)
        if not (getattr(base, "gradient_checkpointing", False) and base.training and torch.is_grad_enabled()):
            return functional_call(base, overrides, args, kwargs)
        # Gradient checkpointing (transformers' `GradientCheckpointingLayer`) would recompute the block at backward
        # time with the original weights: `functional_call` has undone the swap by then. Checkpoint the swapped call
        # as a whole instead, with the copies as explicit inputs (so the reentrant mode reaches them too) and the
        # block's own checkpointing off inside.
        names = list(overrides)

        def swapped(*flat: Any) -> Any:
            weights, inner_args = dict(zip(names, flat[:len(names)])), flat[len(names):]
            base.gradient_checkpointing = False
            try:
                return functional_call(base, weights, inner_args, kwargs)
            finally:
                base.gradient_checkpointing = True

        return base._gradient_checkpointing_func(swapped, *overrides.values(), *args)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "PH-Reg cannot be merged: register tokens are extra sequence positions with no counterpart in the base "
            "weights. Keep the adapter loaded, or use unload() to drop it.")

    def unmerge(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_layer", "reg_unlocked", "reg_tokens"):
                raise
            return getattr(self.base_layer, name)


class RegisterEmbeddingLayer(_RegisterLayerMixin, nn.Module):
    """Embeddings + R register tokens inserted after the `num_prefix` leading tokens."""

    adapter_layer_names = ("reg_tokens", "reg_unlocked")

    def __init__(self, base_layer: nn.Module, adapter_name: str, num_prefix: int, num_registers: int,
                 hidden_size: int, unlocked: list[str], init_std: float | None = None) -> None:
        super().__init__()
        self._init_common(base_layer, num_prefix)
        self.reg_tokens = nn.ParameterDict()
        self.update_layer(adapter_name, num_registers, hidden_size, unlocked, init_std)

    def update_layer(self, adapter_name: str, num_registers: int, hidden_size: int, unlocked: list[str],
                     init_std: float | None = None) -> None:
        std = init_std if init_std is not None else 1.0 / math.sqrt(hidden_size)
        reference = next(self.base_layer.parameters())
        tokens = torch.randn(num_registers, hidden_size, device=reference.device) * std
        self.reg_tokens[adapter_name] = nn.Parameter(tokens.to(reference.dtype))
        self.reg_unlocked[adapter_name] = ParamBank(self.base_layer, unlocked)
        self.reg_count[adapter_name] = num_registers
        self.set_adapter(self.active_adapters)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._active()
        if adapter is None:
            return self.base_layer(*args, **kwargs)
        embeddings = self._run_base(adapter, args, kwargs)
        registers = self.reg_tokens[adapter].to(embeddings.dtype)
        registers = registers.unsqueeze(0).expand(embeddings.shape[0], -1, -1)
        p = self.num_prefix
        return torch.cat([embeddings[:, :p], registers, embeddings[:, p:]], dim=1)


def drop_registers(tokens: torch.Tensor, num_prefix: int, num_registers: int) -> torch.Tensor:
    """Remove positions [num_prefix, num_prefix + num_registers) of a (B, L, d) sequence."""
    return torch.cat([tokens[:, :num_prefix], tokens[:, num_prefix + num_registers:]], dim=1)


def _drop_from_recorded_hidden_states(length: int, num_prefix: int, num_registers: int) -> None:
    """Strip registers from the hidden states transformers recorded for `output_hidden_states` in this forward."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # older transformers collect hidden states in the encoder loop instead
        return
    collected = _active_collector.get()
    if not collected or "hidden_states" not in collected:
        return
    states = collected["hidden_states"]
    for i, state in enumerate(states):
        if isinstance(state, torch.Tensor) and state.dim() == 3 and state.shape[1] == length:
            states[i] = drop_registers(state, num_prefix, num_registers)


class RegisterBlockLayer(_RegisterLayerMixin, nn.Module):
    """The last block the model reads, optionally with a trainable copy of its weights, that drops the registers."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, num_prefix: int, num_registers: int,
                 unlocked: list[str]) -> None:
        super().__init__()
        self._init_common(base_layer, num_prefix)
        self.update_layer(adapter_name, num_registers, unlocked)

    def update_layer(self, adapter_name: str, num_registers: int, unlocked: list[str]) -> None:
        self.reg_unlocked[adapter_name] = ParamBank(self.base_layer, unlocked)
        self.reg_count[adapter_name] = num_registers
        self.set_adapter(self.active_adapters)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        adapter = self._active()
        if adapter is None:
            return self.base_layer(hidden_states, *args, **kwargs)
        out = self._run_base(adapter, (hidden_states,) + args, kwargs)
        count = self.reg_count[adapter]
        _drop_from_recorded_hidden_states(hidden_states.shape[1], self.num_prefix, count)
        if isinstance(out, torch.Tensor):
            return drop_registers(out, self.num_prefix, count)
        return (drop_registers(out[0], self.num_prefix, count),) + tuple(out[1:])
