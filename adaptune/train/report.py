"""`report.md` with plots: what a person reads after a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_text, read_jsonl
from ..utils.markdown import markdown_table


def plot_curves(metrics: list[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per metric family over steps (loss, learning rate, eval metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    series: dict[str, list[tuple[int, float]]] = {}
    for rec in metrics:
        step = rec.get("step")
        for key, value in rec.items():
            if key in ("step", "epoch", "event") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            series.setdefault(key, []).append((step, float(value)))
    groups: dict[str, list[str]] = {}
    for key in series:
        if len(series[key]) < 2:
            continue
        group = "eval" if key.startswith("eval/") else key.split("/")[0]
        groups.setdefault(group, []).append(key)
    paths = []
    for group, keys in groups.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for key in keys:
            xs, ys = zip(*series[key])
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, ms=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(group)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{group.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(run_dir: Path, title: str, summary: dict[str, Any], sections: list[str] | None = None) -> Path:
    """Write `report.md`: summary table, extra markdown sections, and curves from metrics.jsonl."""
    run_dir = Path(run_dir)
    plots = plot_curves(read_jsonl(run_dir / "metrics.jsonl"), run_dir / "plots")
    parts = [f"# {title}\n", "## Summary\n", markdown_table([{"metric": k, "value": v} for k, v in summary.items()
                                                            if not isinstance(v, (dict, list))])]
    parts += sections or []
    if plots:
        parts.append("## Training curves\n")
        parts += [f"![{p.stem}](plots/{p.name})\n" for p in plots]
    parts.append("\nResolved configuration: `config.yaml`; raw metrics: `metrics.jsonl`.\n")
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path
