"""Accuracy-vs-visual-tokens plots: the Pareto front and the figure `adaptune eval` writes (`pareto.png`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (fewer tokens and higher accuracy is better), sorted by tokens."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows: list[dict[str, Any]], path: Path, title: str = "accuracy vs visual tokens") -> Path:
    """Accuracy against mean visual tokens. Rows sharing a `group` (a budget sweep's method or adapter) are joined by a
    line with one marker per budget; single rows are labelled points; the Pareto front is the dashed black line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(float(r.get("visual_tokens", 0)), float(r.get("accuracy", 0))) for r in rows]
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get("group") or r.get("name", "")), []).append(i)
    fig, ax = plt.subplots(figsize=(7, 4.6))
    markers = "osD^v<>ph*"
    colors = plt.get_cmap("tab20").colors
    for k, (name, idx) in enumerate(groups.items()):
        idx = sorted(idx, key=lambda i: pts[i][0])
        xs, ys = [pts[i][0] for i in idx], [pts[i][1] for i in idx]
        ax.plot(xs, ys, marker=markers[k % len(markers)], ms=5, lw=1.2 if len(idx) > 1 else 0, label=name,
                color=colors[(2 * k) % 20 + (2 * k) // 20 % 2])
        if len(idx) == 1:
            ax.annotate(name, (xs[0], ys[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("mean visual tokens per answer")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["pareto_front", "plot_pareto"]
