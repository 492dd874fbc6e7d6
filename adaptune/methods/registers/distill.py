"""PH-Reg self-distillation: the frozen teacher's denoised patch features, and the student's loss against them.

Teacher = the same model with the adapter disabled (`peft_model.disable_adapter()`; no second copy in memory), run on
K augmented views of each image. A view shifts the image by whole patches (up to ~15% of the grid side) and may flip it
horizontally; pixels shifted in from outside are a constant (`fill`, 0 = the mean colour after normalisation). The
offsets are chosen by farthest-point sampling among 100 random candidates, view 0 is the identity. Each view's patch
features are mapped back to the original patch grid and averaged, per position, over the views that cover it: that is
the denoised target (no gradients; `TargetCache` keeps it on disk). Artifact tokens move with the view while content
does not, so averaging suppresses them.

Loss: (1 - mean cosine similarity) + mse_weight * MSE, on patch tokens only (prefix and register tokens excluded),
of the layer the model reads (`patch_features`: the ViT's output, or LLaVA's `vision_feature_layer`).

`Distiller` ties the pieces to one `RegistersConfig` (views, fill, mse_weight) and an optional on-disk cache; the
method's objective (`objective.RegistersObjective`) and the `register_distill` task's evaluation both use it, so the
teacher the student trains against is the one it is measured against.

    views = fps_views((4, 4), num_views=10, seed=0)
    target = denoised_target(peft_model, "clip", pixel_values, views)          # (B, Hg, Wg, d)
    loss = distill_loss(patch_features(peft_model, "clip", pixel_values), target)
    loss, parts = Distiller(config, "clip").loss(peft_model, pixel_values)    # the same, with config's settings
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...models import get_family

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class View:
    """Shift by (dy, dx) whole patches (content moves down/right for positive values), after an optional h-flip."""

    dy: int = 0
    dx: int = 0
    flip: bool = False


def fps_views(grid_hw: tuple[int, int], num_views: int = 10, max_shift: float = 0.15, flip: bool = True,
              candidates: int = 100, seed: int = 0) -> list[View]:
    """`num_views` views: the identity, then farthest-point samples among `candidates` random shifts/flips.

    Distance between two views: Euclidean distance of the shifts (in patches) plus, when the flips differ, the largest
    allowed shift (a flip counts as a maximal move). Deterministic for a given seed.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    max_dy = max(1, round(max_shift * grid_hw[0]))
    max_dx = max(1, round(max_shift * grid_hw[1]))
    rng = np.random.default_rng(seed)
    pool = np.stack([rng.integers(-max_dy, max_dy + 1, candidates), rng.integers(-max_dx, max_dx + 1, candidates),
                     rng.integers(0, 2 if flip else 1, candidates)], axis=1).astype(float)
    flip_cost = float(max(max_dy, max_dx))

    def distance(point: np.ndarray) -> np.ndarray:
        return np.hypot(pool[:, 0] - point[0], pool[:, 1] - point[1]) + flip_cost * np.abs(pool[:, 2] - point[2])

    chosen = [np.zeros(3)]
    nearest = distance(chosen[0])
    for _ in range(num_views - 1):
        pick = pool[int(np.argmax(nearest))]
        chosen.append(pick)
        nearest = np.minimum(nearest, distance(pick))
    return [View(int(p[0]), int(p[1]), bool(p[2])) for p in chosen]


def _shift_slices(size: int, shift: int) -> tuple[slice, slice]:
    """(destination, source) slices along an axis of `size` for out[p] = in[p - shift]."""
    if shift >= 0:
        return slice(shift, size), slice(0, size - shift)
    return slice(0, size + shift), slice(-shift, size)


def apply_view(pixel_values: torch.Tensor, view: View, patch: int, fill: float = 0.0) -> torch.Tensor:
    """The view of a (B, C, H, W) batch: flip, then shift by whole patches with a constant fill."""
    x = pixel_values.flip(-1) if view.flip else pixel_values
    out = torch.full_like(x, fill)
    height, width = x.shape[-2:]
    dst_h, src_h = _shift_slices(height, view.dy * patch)
    dst_w, src_w = _shift_slices(width, view.dx * patch)
    out[..., dst_h, dst_w] = x[..., src_h, src_w]
    return out


def map_back(features: torch.Tensor, view: View) -> tuple[torch.Tensor, torch.Tensor]:
    """A view's (B, Hg, Wg, d) patch features on the original grid, and the (Hg, Wg) mask of covered positions."""
    grid_h, grid_w = features.shape[1:3]
    out = torch.zeros_like(features)
    covered = torch.zeros(grid_h, grid_w, dtype=features.dtype, device=features.device)
    src_h, dst_h = _shift_slices(grid_h, view.dy)  # the inverse shift: out[p] = view[p + dy]
    src_w, dst_w = _shift_slices(grid_w, view.dx)
    out[:, dst_h, dst_w] = features[:, src_h, src_w]
    covered[dst_h, dst_w] = 1
    if view.flip:
        out, covered = out.flip(2), covered.flip(1)
    return out, covered


def denoise(feature_fn: FeatureFn, pixel_values: torch.Tensor, views: list[View], patch: int,
            fill: float = 0.0) -> torch.Tensor:
    """Average of `feature_fn` over `views`, mapped back to the original grid.

    `feature_fn` maps (B, C, H, W) pixels to (B, Hg, Wg, d) patch features.
    """
    batch = pixel_values.shape[0]
    stacked = torch.cat([apply_view(pixel_values, v, patch, fill) for v in views], dim=0)
    features = feature_fn(stacked)
    total, count = None, None
    for k, view in enumerate(views):
        mapped, covered = map_back(features[k * batch:(k + 1) * batch], view)
        total = mapped if total is None else total + mapped
        count = covered if count is None else count + covered
    return total / count.clamp(min=1)[None, :, :, None]


# ------------------------------------------------------------------------------------------------ model features


def _vision_module(model: nn.Module, family: str) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = get_family(family).vision_path
    return base.get_submodule(path) if path else base


def patch_size_of(model: nn.Module, family: str) -> int:
    return int(_vision_module(model, family).config.patch_size)


def patch_features(model: nn.Module, family: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """The patch tokens the model reads from its ViT, as a (B, Hg, Wg, d) grid (prefix and register tokens
    excluded): the ViT's output, or on LLaVA `hidden_states[vision_feature_layer]` (-2 on LLaVA-1.5)."""
    vision = _vision_module(model, family)
    patch = int(vision.config.patch_size)
    grid_h, grid_w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer = get_family(family).vision_feature_layer(base)
    if layer is None:
        tokens = vision(pixel_values=pixel_values).last_hidden_state
    else:
        tokens = vision(pixel_values=pixel_values, output_hidden_states=True).hidden_states[layer]
    return tokens[:, -grid_h * grid_w:].reshape(tokens.shape[0], grid_h, grid_w, tokens.shape[-1])


def teacher_context(model: nn.Module):
    """`model.disable_adapter()` for a PeftModel (the frozen teacher), otherwise nothing."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


@torch.no_grad()
def denoised_target(model: nn.Module, family: str, pixel_values: torch.Tensor, views: list[View] | None = None,
                    fill: float = 0.0, **view_kwargs) -> torch.Tensor:
    """The teacher's denoised (B, Hg, Wg, d) patch features: adapter disabled, averaged over `views`."""
    patch = patch_size_of(model, family)
    if views is None:
        views = fps_views((pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch), **view_kwargs)
    was_training = model.training
    model.eval()
    try:
        with teacher_context(model):
            return denoise(lambda x: patch_features(model, family, x), pixel_values, views, patch, fill)
    finally:
        model.train(was_training)


def distill_loss(student: torch.Tensor, target: torch.Tensor, mse_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """(1 - mean cosine) + mse_weight * MSE over patch tokens; returns the loss and its parts as floats."""
    student = student.reshape(-1, student.shape[-1]).float()
    target = target.reshape(-1, target.shape[-1]).float().to(student.device)
    cosine = F.cosine_similarity(student, target, dim=-1).mean()
    mse = F.mse_loss(student, target)
    loss = (1 - cosine) + mse_weight * mse
    return loss, {"cosine": float(cosine.detach()), "mse": float(mse.detach())}


class TargetCache:
    """Denoised targets on disk, one file per image, keyed by the image tensor, the views and a namespace.

    The namespace must name the teacher (e.g. the base model's path): targets are only valid for one base model.
    """

    def __init__(self, directory: str | Path, namespace: str = "") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace

    def key(self, image: torch.Tensor, views: list[View], fill: float) -> str:
        digest = hashlib.sha1(f"{self.namespace}|{views}|{fill}|{tuple(image.shape)}".encode())
        digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def targets(self, model: nn.Module, family: str, pixel_values: torch.Tensor, views: list[View],
                fill: float = 0.0) -> torch.Tensor:
        keys = [self.key(img, views, fill) for img in pixel_values]
        found: dict[int, torch.Tensor] = {}
        for i, key in enumerate(keys):
            path = self.directory / f"{key}.pt"
            if path.exists():
                found[i] = torch.load(path, map_location=pixel_values.device, weights_only=True)
        missing = [i for i in range(len(keys)) if i not in found]
        if missing:
            fresh = denoised_target(model, family, pixel_values[missing], views, fill)
            for i, target in zip(missing, fresh):
                torch.save(target.cpu(), self.directory / f"{keys[i]}.pt")
                found[i] = target
        return torch.stack([found[i] for i in range(len(keys))])


class Distiller:
    """PH-Reg's teacher and loss with the settings of one `RegistersConfig` (views chosen per patch grid on first use)."""

    def __init__(self, config: Any, family: str, cache: TargetCache | None = None) -> None:
        self.config = config
        self.family = family
        self.cache = cache
        self._views: dict[tuple[int, int], list[View]] = {}

    def views(self, model: nn.Module, pixel_values: torch.Tensor) -> list[View]:
        patch = patch_size_of(model, self.family)
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        if grid not in self._views:
            c = self.config
            self._views[grid] = fps_views(grid, c.num_views, c.max_shift, c.flip, c.candidates, c.view_seed)
        return self._views[grid]

    def targets(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """The denoised (B, Hg, Wg, d) targets of `pixel_values` (from the cache when there is one)."""
        views = self.views(model, pixel_values)
        if self.cache is not None:
            return self.cache.targets(model, self.family, pixel_values, views, self.config.fill)
        return denoised_target(model, self.family, pixel_values, views, self.config.fill)

    def loss(self, model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(1 - cosine) + mse_weight * MSE between the student's patch features and the denoised targets."""
        target = self.targets(model, pixel_values)
        return distill_loss(patch_features(model, self.family, pixel_values), target, self.config.mse_weight)


def grid_side(num_tokens: int) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} patch tokens are not a square grid")
    return side
