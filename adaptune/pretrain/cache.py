"""A folder cache for pre-trained tiny models, keyed by a hash of everything that decides their weights.

A build writes into a temporary sibling folder that is renamed into place only when complete (a `DONE` marker is the
last file), so a killed build never leaves a half model that a later run would load.

    path = cache_path(cache_dir, "tiny_clip", settings)
    if not is_complete(path):
        with atomic_dir(path) as tmp: ...; mark_complete(tmp, settings, metrics)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_json

CACHE_VERSION = 1
"""Bump when the training code changes in a way that changes the weights (invalidates every cached model)."""


def default_cache_dir() -> Path:
    """`$ADAPTUNE_CACHE/pretrain`, else `~/.cache/adaptune/pretrain`."""
    root = os.environ.get("ADAPTUNE_CACHE") or Path.home() / ".cache" / "adaptune"
    return Path(root) / "pretrain"


def settings_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps({"cache_version": CACHE_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(cache_dir: str | Path | None, kind: str, settings: dict[str, Any]) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{kind}-{settings_hash(settings)}"


def is_complete(path: Path) -> bool:
    return (Path(path) / "DONE").exists()


def mark_complete(folder: Path, settings: dict[str, Any], metrics: dict[str, Any]) -> None:
    atomic_write_json(Path(folder) / "settings.json", settings)
    atomic_write_json(Path(folder) / "metrics.json", metrics)
    (Path(folder) / "DONE").write_text("ok\n")


def read_metrics(path: Path) -> dict[str, Any]:
    file = Path(path) / "metrics.json"
    return json.loads(file.read_text()) if file.exists() else {}


def dataset_fingerprint(rows: Any, columns: tuple[str, ...]) -> str:
    """A content hash of `columns` of a `datasets.Dataset` (images hashed by their encoded bytes)."""
    digest = hashlib.sha256(str(len(rows)).encode())
    table = rows.with_format("arrow")[:] if hasattr(rows, "with_format") else None
    for column in columns:
        values = table.column(column).to_pylist() if table is not None else [r[column] for r in rows]
        for value in values:
            if isinstance(value, dict):  # an encoded image cell {"bytes": ..., "path": ...}
                value = value.get("bytes") or value.get("path")
            digest.update(value if isinstance(value, bytes) else str(value).encode())
    return digest.hexdigest()[:16]
