"""The math of the VLSM adapters: a ReLU bottleneck and the three places it plugs into CLIPSeg.

- `Bottleneck`: Linear(d -> r) -> ReLU -> Linear(r -> d_out) -> ReLU; the caller adds it as a residual.
- `OutputAdapterLayer` (dense variant): wraps an encoder layer's `self_attn` or `mlp`; output h -> h + A(h), before
  the encoder layer's own residual add.
- `InputAdapterLayer` (shallow vision): wraps `decoder.reduces[j]`; its input (the vision hidden state of an extract
  layer) x -> x + A(x). The encoder itself is untouched, only what the decoder reads changes.
- `ConditioningAdapterLayer` (text side): wraps `clip.text_projection`; conditioning c = P(pooled) gets
  + sum_j T_j(eot_j) (shallow text adapters on the end-of-text states of the extract layers, d_text -> r -> proj)
  and, for VLC, c -> c + C(c) (proj -> proj/2 -> proj).

None of them can be merged into weights (ReLU bottlenecks): `merge()` raises.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .._peft_ext import adapter_dtype_device

MERGE_ERROR = ("seg_adapter (VLSM) adapters are non-linear ReLU bottlenecks and cannot be merged into the base "
               "weights; keep the PeftModel (the adapters are cheap) or use unload() to drop them")


class Bottleneck(nn.Sequential):
    """Linear(d_in -> r) -> ReLU -> Linear(r -> d_out) -> ReLU, up-projection initialised N(0, init_scale).

    It computes in its own weights' dtype and returns the input's: on a bf16 / fp16 base PEFT keeps the adapter in
    fp32 (`autocast_adapter_dtype=True`) while the hidden states stay in the base dtype."""

    def __init__(self, d_in: int, r: int, d_out: int | None = None, init_scale: float = 1e-3) -> None:
        super().__init__(nn.Linear(d_in, r), nn.ReLU(), nn.Linear(r, d_out or d_in), nn.ReLU())
        nn.init.normal_(self[2].weight, std=init_scale)
        nn.init.zeros_(self[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self[0].weight.dtype
        return super().forward(x.to(dtype)).to(x.dtype)


class _AdapterLayerBase(nn.Module, BaseTunerLayer):
    """Shared bookkeeping: adapters live in ModuleDicts keyed by adapter name."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self._disable_adapters = False
        self.merged_adapters: list[str] = []

    def _place_adapter(self, adapter_name: str) -> None:
        """Put the new adapter on the device and in the dtype of the wrapped module's weights. PEFT's own helper looks
        for a `.weight` on the wrapped module, which CLIPSeg's attention and MLP blocks do not have."""
        dtype, device = adapter_dtype_device(self.get_base_layer())
        if dtype is None:
            return
        for attr in self.adapter_layer_names:
            container = getattr(self, attr)
            if adapter_name in container:
                container[adapter_name].to(device=device, dtype=dtype)

    def _active(self, container: nn.ModuleDict) -> list[str]:
        if self.disable_adapters:
            return []
        return [a for a in self.active_adapters if a in container]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def unmerge(self) -> None:
        raise NotImplementedError(MERGE_ERROR)


class _BottleneckLayer(_AdapterLayerBase):
    """One bottleneck adapter per adapter name around a sub-module; subclasses say where it applies."""

    adapter_layer_names = ("vlsm_adapter",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, dim: int, r: int, init_scale: float,
                 inference_mode: bool = False) -> None:
        super().__init__(base_layer)
        self.vlsm_adapter = nn.ModuleDict({})
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, dim, r, init_scale, inference_mode)

    def update_layer(self, adapter_name: str, dim: int, r: int, init_scale: float,
                     inference_mode: bool = False) -> None:
        self.vlsm_adapter[adapter_name] = Bottleneck(dim, r, dim, init_scale)
        self._place_adapter(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def __repr__(self) -> str:
        return "seg_adapter." + super().__repr__()


class OutputAdapterLayer(_BottleneckLayer):
    """Dense VLSM adapter on the output of a sub-module (attention or MLP): h -> h + A(h)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        active = self._active(self.vlsm_adapter)
        if not active:
            return out
        hidden = out[0] if isinstance(out, tuple) else out
        for name in active:
            hidden = hidden + self.vlsm_adapter[name](hidden)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


class InputAdapterLayer(_BottleneckLayer):
    """Shallow VLSM vision adapter on the input of a module (a decoder `reduce`): x -> x + A(x)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        for name in self._active(self.vlsm_adapter):
            x = x + self.vlsm_adapter[name](x)
        return self.base_layer(x, *args, **kwargs)


class ConditioningAdapterLayer(_AdapterLayerBase):
    """Wraps `clip.text_projection`: shallow text adapters (per extract layer) and/or the VLC conditioning adapter."""

    adapter_layer_names = ("vlsm_text", "vlsm_conditioning")

    def __init__(self, base_layer: nn.Linear, adapter_name: str, num_text_states: int, r_text: int,
                 r_conditioning: int | None, init_scale: float, inference_mode: bool = False) -> None:
        super().__init__(base_layer)
        self.vlsm_text = nn.ModuleDict({})
        self.vlsm_conditioning = nn.ModuleDict({})
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, num_text_states, r_text, r_conditioning, init_scale, inference_mode)

    def update_layer(self, adapter_name: str, num_text_states: int, r_text: int, r_conditioning: int | None,
                     init_scale: float, inference_mode: bool = False) -> None:
        base = self.get_base_layer()
        d_text, d_proj = base.in_features, base.out_features
        if num_text_states:
            self.vlsm_text[adapter_name] = nn.ModuleList(
                Bottleneck(d_text, r_text, d_proj, init_scale) for _ in range(num_text_states))
        if r_conditioning:
            self.vlsm_conditioning[adapter_name] = Bottleneck(d_proj, r_conditioning, d_proj, init_scale)
        self._place_adapter(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    @property
    def wants_text_states(self) -> bool:
        """True when an active adapter reads the per-layer end-of-text states (the CLIPSeg forward then passes them)."""
        return bool(self._active(self.vlsm_text))

    def forward(self, pooled: torch.Tensor, text_states: list[torch.Tensor] | None = None) -> torch.Tensor:
        conditioning = self.base_layer(pooled)
        for name in self._active(self.vlsm_text):
            if text_states is None:
                raise ValueError("the shallow text adapters need the end-of-text states of the extract layers; call "
                                 "the CLIPSeg model itself (its adapted forward passes them)")
            for adapter, state in zip(self.vlsm_text[name], text_states):
                conditioning = conditioning + adapter(state)
        for name in self._active(self.vlsm_conditioning):
            conditioning = conditioning + self.vlsm_conditioning[name](conditioning)
        return conditioning

    def __repr__(self) -> str:
        return "seg_adapter." + super().__repr__()
