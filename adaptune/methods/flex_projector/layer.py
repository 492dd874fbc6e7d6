"""TokenFLEX math and the two tuner layers that put it into a VLM.

The projector (`FlexProjector`): take a patch grid (B, d, H, W); for a target token grid h x w, bilinearly resize up
to (ceil(H/h)*h, ceil(W/w)*w) when H or W is not a multiple, average-pool non-overlapping windows down to h x w,
flatten row by row, then LayerNorm, SwiGLU (two Linear(d -> 3d), SiLU(a) * b) and Linear(3d -> d_llm). One set of
weights serves every budget; there are no queries, positional terms or residuals.

Where it sits:
- `FlexProjectorLayer` wraps a projector that receives (B, tokens, d) per image (LLaVA's multi_modal_projector,
  SmolVLM's connector). The budget comes from the placeholder count the tuner read off `input_ids`.
- `FlexVisionTowerLayer` wraps the whole Qwen-VL vision tower, because the merger alone never sees the image grid.
  It runs the tower on the real patch grid (`vision_grid_thw`, stashed by the tuner) with the original merger and
  deepstack mergers bypassed, reorders the pre-merger patch features from Qwen's 2x2 merge-window order to a true
  2-D grid, and projects each image to the token grid the language side was told about in `image_grid_thw`.
  Deepstack (Qwen3-VL): each tap's patch grid is resized/pooled to (2h, 2w) the same way, put back into merge-window
  order and fed to the frozen deepstack merger, so its output lands on the same h x w tokens ("pool"), or zeros
  ("zero").

With the adapter disabled both layers call the original module untouched, so outputs are exactly the base model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ...budget.grid import BudgetError, resolve_grid
from ...budget.inputs import check_vision_grids

# ------------------------------------------------------------------------------------------------------ the math


def pool_grid(grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, d, H, W) -> (B, d, h, w): bilinear resize up to multiples of (h, w) if needed, then average pooling."""
    height, width = grid.shape[-2:]
    up_h, up_w = math.ceil(height / h) * h, math.ceil(width / w) * w
    if (up_h, up_w) != (height, width):
        grid = F.interpolate(grid, size=(up_h, up_w), mode="bilinear", align_corners=False)
    return F.avg_pool2d(grid, kernel_size=(up_h // h, up_w // w))


class FlexProjector(nn.Module):
    """Pool to an h x w grid, LayerNorm, SwiGLU: (B, d, H, W) -> (B, h*w, out_dim), tokens row by row.

    `norm_budgets` (the config's `budgets` when `per_budget_norm` is on): after the shared LayerNorm, tokens at budget
    N = h*w get their own elementwise scale and shift, `x * (1 + budget_affine[i, 0]) + budget_affine[i, 1]` with i the
    position of N in `norm_budgets`. The table starts at zero, so a fresh projector computes exactly what the shared
    one does; a budget outside `norm_budgets` has no row and is refused.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_mult: int = 3, norm_budgets: Sequence[int] = ()) -> None:
        super().__init__()
        hidden = hidden_mult * in_dim
        self.norm = nn.LayerNorm(in_dim)
        self.gate = nn.Linear(in_dim, hidden)
        self.up = nn.Linear(in_dim, hidden)
        self.down = nn.Linear(hidden, out_dim)
        self.norm_budgets = [int(b) for b in norm_budgets]
        if len(set(self.norm_budgets)) != len(self.norm_budgets):
            raise ValueError(f"per-budget normalisation needs distinct budgets, got {self.norm_budgets}")
        self.budget_affine = nn.Parameter(torch.zeros(len(self.norm_budgets), 2, in_dim)) if self.norm_budgets else None

    def forward(self, grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
        tokens = pool_grid(grid, h, w).flatten(2).transpose(1, 2)
        tokens = self.norm(tokens)
        if self.budget_affine is not None:
            if h * w not in self.norm_budgets:
                raise BudgetError(f"this TokenFLEX projector has per-budget normalisation for the budgets "
                                  f"{self.norm_budgets} only, not {h * w} ({h} x {w}) tokens: evaluate at a trained "
                                  "budget, or train with that budget in `budgets`")
            scale, shift = self.budget_affine[self.norm_budgets.index(h * w)]
            tokens = tokens * (1 + scale) + shift
        return self.down(F.silu(self.gate(tokens)) * self.up(tokens))


# ------------------------------------------------------------------------------------ Qwen patch order <-> 2-D grid


def merge_order_to_grid(patches: torch.Tensor, height: int, width: int, merge: int) -> torch.Tensor:
    """Qwen patch features (H*W, d) in merge-window order (block row, block col, in-row, in-col) -> (d, H, W)."""
    d = patches.shape[-1]
    grid = patches.reshape(height // merge, width // merge, merge, merge, d)
    return grid.permute(4, 0, 2, 1, 3).reshape(d, height, width)


def grid_to_merge_order(grid: torch.Tensor, merge: int) -> torch.Tensor:
    """The inverse of `merge_order_to_grid`: (d, H, W) -> (H*W, d) in merge-window order."""
    d, height, width = grid.shape
    blocks = grid.reshape(d, height // merge, merge, width // merge, merge)
    return blocks.permute(1, 3, 2, 4, 0).reshape(height * width, d)


def undo_window_order(patches: torch.Tensor, window_index: torch.Tensor, merge_unit: int) -> torch.Tensor:
    """Qwen2.5-VL keeps vision hidden states in window-attention order; put them back in merge-window order."""
    d = patches.shape[-1]
    units = patches.reshape(-1, merge_unit, d)
    return units[torch.argsort(window_index)].reshape(-1, d)


# ------------------------------------------------------------------------------------------------ shared adapter bits


class _FlexLayerMixin(BaseTunerLayer):
    adapter_layer_names = ("flex_projector",)
    other_param_names = ()

    def _init_flex(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        self.flex_projector = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters = []
        # per-forward inputs stashed by the tuner's pre-hook (never saved)
        self._vision_grid: torch.Tensor | None = None
        self._placeholders: int | None = None

    def update_layer(self, adapter_name: str, in_dim: int, out_dim: int, hidden_mult: int,
                     norm_budgets: Sequence[int] = ()) -> None:
        projector = FlexProjector(in_dim, out_dim, hidden_mult, norm_budgets)
        weight = next(self.base_layer.parameters(), None)
        if weight is not None:
            projector.to(device=weight.device, dtype=weight.dtype if weight.is_floating_point() else None)
        self.flex_projector[adapter_name] = projector
        self.set_adapter(self.active_adapters)

    def _active_projector(self) -> FlexProjector | None:
        if self.disable_adapters or self.merged:
            return None
        active = [a for a in self.active_adapters if a in self.flex_projector]
        if len(active) > 1:
            raise ValueError(f"TokenFLEX replaces the projector, so only one adapter can be active, got {active}")
        return self.flex_projector[active[0]] if active else None

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "TokenFLEX cannot be merged: it replaces the projector with a different module (pooling + SwiGLU) that "
            "has no counterpart in the base architecture. Keep the adapter loaded, or use unload() to drop it.")

    def unmerge(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        # code around the wrapped module reads its attributes (`visual.dtype`, `visual.spatial_merge_size`, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_layer", "flex_projector"):
                raise
            return getattr(self.base_layer, name)


# ---------------------------------------------------------------------------------- LLaVA / SmolVLM projector layer


class FlexProjectorLayer(_FlexLayerMixin, nn.Module):
    """Wraps a projector fed (B, tokens, d) per image: LLaVA `multi_modal_projector`, SmolVLM `connector`.

    `default_divisor` is how many patches one output token of the original projector covers (1 for LLaVA, the
    pixel-shuffle scale squared for SmolVLM): it sets the budget when the input carries no placeholder count.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, in_dim: int, out_dim: int, hidden_mult: int,
                 default_divisor: int = 1, norm_budgets: Sequence[int] = ()) -> None:
        super().__init__()
        self._init_flex(base_layer)
        self.default_divisor = default_divisor
        self.update_layer(adapter_name, in_dim, out_dim, hidden_mult, norm_budgets)

    def _patch_grid(self, features: torch.Tensor) -> tuple[torch.Tensor, int]:
        rows = features.shape[1]
        for prefix in (0, 1):  # 1: a CLS row kept by LLaVA's "full" feature strategy
            side = math.isqrt(rows - prefix)
            if side * side == rows - prefix:
                grid = features[:, prefix:].transpose(1, 2).reshape(features.shape[0], -1, side, side)
                return grid, side
        raise ValueError(f"TokenFLEX needs a square patch grid from the vision tower, got {rows} tokens per image")

    def forward(self, features: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        projector = self._active_projector()
        images = features.shape[0]
        if projector is None:
            if self._placeholders is not None and self._placeholders != images * self._default_tokens(features):
                raise ValueError(
                    f"the input has {self._placeholders} image placeholder tokens for {images} image(s), but the base "
                    "projector (adapter disabled or merged) only produces its fixed count; flex-budget inputs need "
                    "the TokenFLEX adapter enabled")
            return self.base_layer(features, *args, **kwargs)
        grid, side = self._patch_grid(features)
        if self._placeholders is None:
            budget = self._default_tokens(features)
        else:
            if self._placeholders % images:
                raise BudgetError(f"{self._placeholders} image placeholder tokens cannot be split evenly over "
                                  f"{images} images: TokenFLEX uses one budget per call")
            budget = self._placeholders // images
        h, w = resolve_grid(budget, (side, side))
        # the projector computes in its own dtype (fp32 on a bf16 / fp16 base under PEFT's autocast), the LM in its own
        return projector(grid.to(projector.norm.weight.dtype), h, w).to(features.dtype)

    def _default_tokens(self, features: torch.Tensor) -> int:
        side = math.isqrt(features.shape[1])
        return max(1, side * side // self.default_divisor)


# ------------------------------------------------------------------------------------------- Qwen-VL vision layer


class _Capture(nn.Module):
    """Stands in for a bypassed merger: records its input, returns an empty (tokens, 0) tensor."""

    def __init__(self, unit: int) -> None:
        super().__init__()
        self.unit = unit
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return x.new_zeros(x.shape[0] // self.unit, 0)


def _swap_modules(swaps: list[tuple[nn.Module, str, nn.Module]]) -> list[nn.Module]:
    """Put each replacement in place of `parent._modules[name]`; returns the originals (for `_restore_modules`).
    Plain statements rather than a context manager: `torch.compile` (dynamo) cannot trace through
    `@contextmanager` / `ExitStack` blocks here (Python 3.11 exception tables), it can through try / finally."""
    originals = []
    for parent, name, replacement in swaps:
        originals.append(parent._modules[name])
        parent._modules[name] = replacement
    return originals


def _restore_modules(swaps: list[tuple[nn.Module, str, nn.Module]], originals: list[nn.Module]) -> None:
    for (parent, name, _), original in zip(swaps, originals):
        parent._modules[name] = original


class FlexVisionTowerLayer(_FlexLayerMixin, nn.Module):
    """Wraps a Qwen-VL vision tower (`model.visual`) and replaces what its merger produces.

    `grid_thw` passed by the model is the language-side grid (pooled to the budget by `FlexProcessor`); the real patch
    grid arrives through `_vision_grid` (from the `vision_grid_thw` input). Without it the grid is taken as real and
    the budget is the family default (H/2 x W/2 tokens).
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, hidden_mult: int, deepstack: str = "pool",
                 windowed: bool = False, norm_budgets: Sequence[int] = ()) -> None:
        super().__init__()
        self._init_flex(base_layer)
        self.deepstack = deepstack
        self.windowed = windowed
        cfg = base_layer.config
        self.merge = int(cfg.spatial_merge_size)
        self.update_layer(adapter_name, int(cfg.hidden_size), int(cfg.out_hidden_size), hidden_mult, norm_budgets)

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor | None = None, **kwargs: Any):
        projector = self._active_projector()
        real = self._vision_grid
        if projector is None:
            if real is not None and not torch.equal(real.to(grid_thw.device), grid_thw):
                raise ValueError("this batch was prepared for a TokenFLEX budget (vision_grid_thw differs from "
                                 "image_grid_thw) but the adapter is disabled or merged; the base merger only "
                                 "produces its fixed token count")
            return self.base_layer(hidden_states, grid_thw=grid_thw, **kwargs)
        real = grid_thw if real is None else real.to(grid_thw.device)
        check_vision_grids(hidden_states.shape[0], real, grid_thw, self.merge, "TokenFLEX")
        base = self.base_layer
        unit = self.merge * self.merge
        merger_capture = _Capture(unit)
        taps = [_Capture(unit) for _ in getattr(base, "deepstack_merger_list", [])]
        swaps = [(base, "merger", merger_capture)]
        swaps += [(base.deepstack_merger_list, str(i), tap) for i, tap in enumerate(taps)]
        originals = _swap_modules(swaps)
        try:
            out = base(hidden_states, grid_thw=real, **kwargs)
        finally:
            _restore_modules(swaps, originals)
        deepstack_mergers = originals[1:]
        patches = merger_capture.inputs[-1]
        window_index = self._window_index(real) if self.windowed else None
        if window_index is not None:
            patches = undo_window_order(patches, window_index.to(patches.device), unit)
        dtype = projector.norm.weight.dtype
        tokens, tap_tokens = [], [[] for _ in taps]
        offset = 0
        for (_, height, width), (_, lang_h, lang_w) in zip(real.tolist(), grid_thw.tolist()):
            h, w = lang_h // self.merge, lang_w // self.merge
            resolve_grid((h, w), (height, width))  # raises BudgetError when the budget does not fit the image
            n = height * width
            grid = merge_order_to_grid(patches[offset:offset + n], height, width, self.merge)
            tokens.append(projector(grid[None].to(dtype), h, w)[0].to(patches.dtype))
            for k, (tap, merger) in enumerate(zip(taps, deepstack_mergers)):
                tap_tokens[k].append(self._deepstack(tap.inputs[-1][offset:offset + n], merger, height, width, h, w))
            offset += n
        out.pooler_output = torch.cat(tokens, dim=0)
        if taps:
            out.deepstack_features = [torch.cat(t, dim=0) for t in tap_tokens]
        return out

    def _deepstack(self, patches: torch.Tensor, merger: nn.Module, height: int, width: int, h: int,
                   w: int) -> torch.Tensor:
        if self.deepstack == "zero":
            out_dim = self.base_layer.config.out_hidden_size
            return patches.new_zeros(h * w, out_dim)
        m = self.merge
        grid = merge_order_to_grid(patches, height, width, m)
        pooled = pool_grid(grid[None], m * h, m * w)[0]
        return merger(grid_to_merge_order(pooled, m).contiguous())

    def _window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        from transformers.vision_utils import get_vision_window_index

        base = self.base_layer
        index, _ = get_vision_window_index(grid_thw, spatial_merge_size=base.spatial_merge_size,
                                           window_size=base.window_size, patch_size=base.patch_size)
        return index
