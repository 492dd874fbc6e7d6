"""Diagnostics of a mask-tuned model: the share of masked (zeroed) weights per layer, as rows and a PNG bar plot.

    rows = masked_share(peft_model)              # [{"module": ..., "zeroed": 12, "total": 1024, "share": 0.0117}, ...]
    plot_masked_share(rows, "masked_share.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .layer import MaskTuningLayer


def masked_share(model: nn.Module, adapter_name: str | None = None) -> list[dict[str, Any]]:
    """One row per masked module: zeroed weights, total weights, share zeroed (plus an "all" row at the end)."""
    rows = []
    zeroed_all = total_all = 0
    for name, module in model.named_modules():
        if not isinstance(module, MaskTuningLayer):
            continue
        adapter = adapter_name or module.active_adapters[0]
        zeroed, total = module.masked_count(adapter)
        zeroed_all, total_all = zeroed_all + zeroed, total_all + total
        short = name.removeprefix("base_model.model.")
        rows.append({"module": short, "zeroed": zeroed, "total": total, "share": zeroed / total})
    if rows:
        rows.append({"module": "all", "zeroed": zeroed_all, "total": total_all, "share": zeroed_all / total_all})
    return rows


def plot_masked_share(rows: list[dict[str, Any]], path: str | Path, title: str = "Masked (zeroed) weights") -> Path:
    """A horizontal bar chart of `share` per module, written to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    labels = [r["module"] for r in rows]
    shares = [100.0 * r["share"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    ax.barh(range(len(rows)), shares, color=["#4c72b0"] * (len(rows) - 1) + ["#dd8452"])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("% of weights masked")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
