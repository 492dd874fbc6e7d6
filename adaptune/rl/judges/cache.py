"""An on-disk verdict cache (SQLite) shared by the LLM judges.

Why: GRPO asks the same (question, reference, answer) many times - within a group of 16 rollouts, across epochs and
across restarts - and each call to a hosted judge costs time and money. SQLite gives atomic writes (each `put` is one
transaction), safe concurrent readers/writers across DDP ranks (WAL mode, busy timeout) and no extra dependency.

The key is a SHA-256 of (judge model, prompt version, question, references, answer): change the judge or the prompt
and the old entries are simply not found. Only parsed verdicts are stored - never failures, never request headers,
so never an API key.

    >>> import tempfile, os
    >>> cache = VerdictCache(os.path.join(tempfile.mkdtemp(), "judge.sqlite"))
    >>> key = cache_key("gpt-x", "v1", "q", ["a"], "a")
    >>> cache.get(key) is None
    True
    >>> cache.put(key, 1.0, "VERDICT: CORRECT"); cache.get(key)
    (1.0, 'VERDICT: CORRECT')
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def cache_key(model: str, prompt_version: str, question: str, references: Sequence[str], answer: str) -> str:
    """Stable hex digest of everything that decides a verdict."""
    payload = json.dumps([model, prompt_version, question, list(references), answer], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache:
    """Maps a cache key to (score, raw judge text)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, score REAL NOT NULL, raw TEXT, created REAL)"
        )

    def get(self, key: str) -> tuple[float, str | None] | None:
        with self._lock:
            row = self._conn.execute("SELECT score, raw FROM verdicts WHERE key = ?", (key,)).fetchone()
        return (float(row[0]), row[1]) if row else None

    def put(self, key: str, score: float, raw: str | None) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO verdicts (key, score, raw, created) VALUES (?, ?, ?, ?)",
                (key, float(score), raw, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"VerdictCache({str(self.path)!r})"
