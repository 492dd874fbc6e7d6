"""The math of R-AMT on one layer: a binary mask over a frozen weight, learned through scores.

Each masked weight W gets a real-valued score tensor S of the same shape (initialised to `init_score`). The forward
pass uses W * m with m = 1[S > threshold]; the backward pass treats the thresholding as the identity
(straight-through), so dL/dS = dL/dm = dL/dW_eff * W. Only S trains. Merging writes W * m into the base weight, which
then runs at exactly the speed of the original layer.

The binary masks are also kept bit-packed in a persistent buffer (`amt_mask_bits`, refreshed whenever a state dict is
taken), so an adapter folder holds a 1-bit-per-weight mask that is what inference needs; the scores ride along for
resuming unless `save_scores=False`, in which case loading rebuilds them from the bits.

    layer = MaskTuningLayer(nn.Linear(8, 4), "default", init_score=0.01, threshold=0.005)
    layer.mask("default")            # all ones at the start
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _StraightThroughMask(torch.autograd.Function):
    """Forward: 1[scores > threshold] (as the scores' dtype). Backward: the incoming gradient, unchanged."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output, None


def binary_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The {0, 1} mask of `scores` with a straight-through gradient (d mask / d scores = identity)."""
    return _StraightThroughMask.apply(scores, threshold)


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Flatten a boolean (or {0,1}) tensor and pack 8 entries per byte, most significant bit first (numpy packbits
    order). The last byte is zero-padded."""
    flat = mask.detach().reshape(-1).to(torch.uint8).cpu()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_bits`: a bool tensor of `shape`."""
    numel = 1
    for size in shape:
        numel *= int(size)
    bits = packed.detach().cpu().to(torch.uint8).view(-1, 1).bitwise_and(_BIT_WEIGHTS).ne(0)
    return bits.reshape(-1)[:numel].reshape(tuple(shape))


class MaskTuningLayer(nn.Module, BaseTunerLayer):
    """Wraps a Linear / ConvNd; its weight is multiplied by the binary mask of each active adapter."""

    adapter_layer_names = ("amt_scores",)
    other_param_names = ("amt_mask_bits", "amt_threshold", "amt_init_score")

    def __init__(self, base_layer: nn.Module, adapter_name: str, init_score: float = 0.01, threshold: float = 0.005,
                 inference_mode: bool = False) -> None:
        super().__init__()
        if not isinstance(base_layer, SUPPORTED_LAYERS):
            raise TypeError(f"mask tuning supports nn.Linear and nn.Conv1d/2d/3d, not {type(base_layer).__name__}")
        weight = base_layer.weight
        if not weight.dtype.is_floating_point or type(weight) not in (torch.Tensor, nn.Parameter):
            raise TypeError(f"mask tuning needs a plain floating-point weight, got {type(weight).__name__} of "
                            f"{weight.dtype} (quantized layers are not supported)")
        self.base_layer = base_layer
        self.amt_scores = nn.ParameterDict({})
        self.amt_mask_bits = BufferDict({}, persistent=True)
        self.amt_threshold: dict[str, float] = {}
        self.amt_init_score: dict[str, float] = {}
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._weight_before_merge: torch.Tensor | None = None
        self.update_layer(adapter_name, init_score, threshold, inference_mode)
        self.register_state_dict_pre_hook(_refresh_bits_hook)
        self.register_load_state_dict_pre_hook(_scores_from_bits_hook)

    def update_layer(self, adapter_name: str, init_score: float, threshold: float,
                     inference_mode: bool = False) -> None:
        weight = self.get_base_layer().weight
        scores = torch.full(weight.shape, float(init_score), dtype=torch.float32, device=weight.device)
        self.amt_scores[adapter_name] = nn.Parameter(scores)
        self.amt_threshold[adapter_name] = float(threshold)
        self.amt_init_score[adapter_name] = float(init_score)
        self.amt_mask_bits[adapter_name] = pack_bits(scores > threshold).to(weight.device)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    # -- masks --------------------------------------------------------------------------------------------------------
    def mask(self, adapter_name: str) -> torch.Tensor:
        """The {0,1} mask of `adapter_name` in the weight's dtype; straight-through gradient to the scores."""
        weight = self.get_base_layer().weight
        return binary_mask(self.amt_scores[adapter_name], self.amt_threshold[adapter_name]).to(weight.dtype)

    def effective_weight(self, adapter_names: list[str] | None = None) -> torch.Tensor:
        weight = self.get_base_layer().weight
        for name in adapter_names if adapter_names is not None else self.active_adapters:
            if name in self.amt_scores:
                weight = weight * self.mask(name)
        return weight

    def refresh_bits(self) -> None:
        """Write the current binary masks into the bit-packed buffers (done automatically on `state_dict()`)."""
        for name, scores in self.amt_scores.items():
            packed = pack_bits(scores > self.amt_threshold[name]).to(self.amt_mask_bits[name].device)
            self.amt_mask_bits[name].copy_(packed)

    # -- forward ------------------------------------------------------------------------------------------------------
    def _forward_with(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            return F.linear(x, weight, base.bias)
        return base._conv_forward(x, weight, base.bias)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.amt_scores]
        if self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        return self._forward_with(self.effective_weight(active), x)

    # -- merge --------------------------------------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Bake the masks into the base weight (W <- W * m). The original weight is kept until `unmerge()`."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        base = self.get_base_layer()
        with torch.no_grad():
            if self._weight_before_merge is None:
                self._weight_before_merge = base.weight.data.clone()
            merged = base.weight.data
            for name in adapter_names:
                merged = merged * self.mask(name).detach()
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights of adapter(s) {adapter_names}")
            base.weight.data = merged
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        self.get_base_layer().weight.data = self._weight_before_merge
        self._weight_before_merge = None
        self.merged_adapters = []

    # -- diagnostics --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def masked_count(self, adapter_name: str) -> tuple[int, int]:
        """(number of zeroed weights, number of weights) of `adapter_name`."""
        scores = self.amt_scores[adapter_name]
        return int((scores <= self.amt_threshold[adapter_name]).sum()), scores.numel()

    def __repr__(self) -> str:
        return "mask_tuning." + super().__repr__()


def _refresh_bits_hook(module: MaskTuningLayer, prefix: str, keep_vars: bool) -> None:
    module.refresh_bits()


def _scores_from_bits_hook(module: MaskTuningLayer, state_dict: dict[str, torch.Tensor], prefix: str,
                           *args: Any) -> None:
    """On load: rebuild missing scores from the bit-packed masks; refuse scores that contradict the stored masks."""
    for name, scores in module.amt_scores.items():
        bits_key, scores_key = f"{prefix}amt_mask_bits.{name}", f"{prefix}amt_scores.{name}"
        if bits_key not in state_dict:
            continue
        mask = unpack_bits(state_dict[bits_key], scores.shape).to(scores.device)
        threshold = module.amt_threshold[name]
        if scores_key not in state_dict:
            init = module.amt_init_score[name]
            off = threshold - (init - threshold)  # as far below the threshold as the initial score is above it
            rebuilt = torch.where(mask, torch.full_like(scores, init), torch.full_like(scores, off))
            state_dict[scores_key] = rebuilt.detach()
        elif not torch.equal(state_dict[scores_key].to(scores.device) > threshold, mask):
            raise ValueError(f"{prefix.rstrip('.')}: the stored scores and the stored bit-packed mask of adapter "
                             f"{name!r} disagree (the adapter file was edited or corrupted)")
