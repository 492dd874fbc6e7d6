"""Shared benchmark helpers: medians of repeats, ratios measured side by side, a table, JSON results.

Every benchmark measures the things it compares in the same process, interleaved, and reports ratios with their
spread (min-max of per-repeat ratios), never absolute times against a threshold (these machines are noisy).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timed(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> float:
    if sync:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t0


def compare(candidates: dict[str, Callable[[], Any]], baseline: str, repeats: int = 7, warmup: int = 1,
            sync: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """Time each candidate `repeats` times, interleaved; ratios to `baseline` per repeat, summarised."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(timed(fn, sync))
    out = {}
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, times[baseline])]
        out[name] = {"median_s": statistics.median(values), "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "repeats": repeats}
    return out


def print_table(title: str, rows: dict[str, dict[str, float]], baseline: str) -> None:
    print(f"\n## {title}  (ratio = time / {baseline}; median of per-repeat ratios, [min, max])")
    print(f"{'case':<34} {'median s':>10} {'ratio':>8}  spread")
    for name, r in rows.items():
        print(f"{name:<34} {r['median_s']:>10.4f} {r['ratio']:>8.3f}  [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]")


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path


def capture_lm_inputs(model: Any, lm: Any, batch: dict[str, Any], attach: Callable[[], Any] | None = None
                      ) -> dict[str, Any]:
    """The kwargs the language model `lm` gets during one no-grad forward of `model` on `batch`; `attach()` (e.g. a
    token reducer) is applied for that forward and removed after."""
    import torch

    captured: dict[str, Any] = {}

    def hook(module, args, kwargs):
        captured.update(kwargs)
        if args:
            captured["input_ids"] = args[0]

    handle = lm.register_forward_pre_hook(hook, with_kwargs=True)
    extra = attach() if attach is not None else None
    try:
        with torch.no_grad():
            model(**batch, use_cache=False)
    finally:
        handle.remove()
        if extra is not None:
            extra.remove()
    return captured
