"""Artifact diagnostics for PH-Reg: numbers first, one picture helper.

- `cosine_to_target`: per-patch cosine similarity between features and the denoised targets; `percentiles` of it.
- `outlier_share`: the share of patch tokens whose norm is an outlier (above Q3 + k * IQR of all patch norms).
- `norm_maps` / `save_norm_figure`: per-patch feature norms drawn as a grid for a few images (base vs registers).

    cos = cosine_to_target(patch_features(model, "clip", pv), target)
    percentiles(cos)                       # {"p1": ..., "p5": ..., "p50": ..., ...}
    outlier_share(patch_features(...))     # 0.03
    save_norm_figure({"base": base_maps, "registers": reg_maps}, "norms.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

DEFAULT_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def cosine_to_target(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per patch token (flattened) between (..., d) features and targets of the same shape."""
    d = features.shape[-1]
    return F.cosine_similarity(features.reshape(-1, d).float(), target.reshape(-1, d).float().to(features.device),
                               dim=-1)


def percentiles(values: torch.Tensor, qs: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, float]:
    """`{"p1": ..., "p50": ..., "mean": ...}` of a 1-D tensor."""
    values = values.detach().float().flatten().cpu()
    out = {f"p{q:g}": float(torch.quantile(values, q / 100.0)) for q in qs}
    out["mean"] = float(values.mean())
    return out


def patch_norms(features: torch.Tensor) -> torch.Tensor:
    """L2 norm of each patch token: (B, ..., d) -> (B, ...)."""
    return features.detach().float().norm(dim=-1)


def outlier_share(features: torch.Tensor, k: float = 3.0) -> float:
    """Share of patch tokens whose norm exceeds Q3 + k * IQR of all patch-token norms in `features`."""
    norms = patch_norms(features).flatten().cpu()
    q1, q3 = torch.quantile(norms, 0.25), torch.quantile(norms, 0.75)
    return float((norms > q3 + k * (q3 - q1)).float().mean())


def norm_maps(features: torch.Tensor) -> torch.Tensor:
    """(B, Hg, Wg, d) patch features -> (B, Hg, Wg) norms."""
    if features.dim() != 4:
        raise ValueError(f"expected (B, Hg, Wg, d) patch features, got shape {tuple(features.shape)}")
    return patch_norms(features).cpu()


def save_norm_figure(maps: dict[str, torch.Tensor], path: str | Path, max_images: int = 4) -> Path:
    """A PNG with one row per entry of `maps` (e.g. "base", "registers") and one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(maps.items())
    cols = min(max_images, min(int(m.shape[0]) for _, m in rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.2 * len(rows)), squeeze=False)
    for r, (name, values) in enumerate(rows):
        vmax = float(values[:cols].max())
        for c in range(cols):
            ax = axes[r][c]
            image = ax.imshow(values[c].numpy(), cmap="viridis", vmin=0.0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
        fig.colorbar(image, ax=list(axes[r]), fraction=0.03)
    fig.suptitle("patch feature norm per patch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
