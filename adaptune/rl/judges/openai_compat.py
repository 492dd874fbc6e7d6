"""The `openai` judge: any OpenAI-compatible /v1/chat/completions endpoint (vLLM, TGI, `transformers serve`, hosted).

Why: VisionThink judges correctness with an LLM that runs as a service; a service times out, rate-limits, returns
half a body or talks nonsense. This client survives all of that and reports what happened:
- bounded concurrency (a semaphore per event loop) and a per-request timeout;
- retries with exponential backoff and jitter on timeouts, connection errors, 408/429/5xx and broken bodies;
  `Retry-After` (seconds or an HTTP date) is honoured on 429/503, capped by `retry_after_max_s`;
- identical items in a batch are judged once; parsed verdicts go to an on-disk SQLite cache (see cache.py);
- a strict verdict parser (prompt.py): unparseable output is a failure, never a pass;
- the API key is read from the environment variable named by `api_key_env` at request time. It is never stored on
  the judge or config, never logged, never cached, so it cannot appear in repr/str or in the cache file.
Only the standard library is used (urllib in a small thread pool), so it runs wherever adaptune runs.

    # recipe (YAML)
    judge: {name: openai, base_url: "http://127.0.0.1:8000/v1", model: Qwen/Qwen3-1.7B,
            api_key_env: null, cache_path: runs/judge.sqlite, on_failure: fallback, fallback: rule}

    judge = OpenAIJudge(OpenAIJudgeConfig(base_url="http://127.0.0.1:8000/v1", model="m"))
    verdicts = judge.score_sync([JudgeItem("Capital of France?", "Paris", "Paris")])
    judge.stats()  # {"requests": 1, ...}
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from typing import Any

from adaptune.registry import JUDGES

from .base import BaseJudge, JudgeItem, Verdict
from .cache import VerdictCache, cache_key
from .prompt import PROMPT_VERSION, build_messages, parse_verdict

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_STATUS = frozenset({429, 503})


@dataclass
class OpenAIJudgeConfig:
    """Settings of the OpenAI-compatible judge (no secret lives here: only the NAME of the key's variable)."""

    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "endpoint root, ending in /v1"})
    model: str = field(default="gpt-4o", metadata={"help": "model name sent in each request"})
    api_key_env: str | None = field(default=None, metadata={"help": "env variable holding the key; None = no auth"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight at once"})
    timeout_s: float = field(default=30.0, metadata={"help": "per-request timeout"})
    max_retries: int = field(default=3, metadata={"help": "retries after the first attempt"})
    backoff_base_s: float = field(default=0.5, metadata={"help": "first backoff; doubles per retry, with jitter"})
    backoff_max_s: float = field(default=30.0, metadata={"help": "largest backoff"})
    retry_after_max_s: float = field(default=60.0, metadata={"help": "cap on a server's Retry-After"})
    max_tokens: int = field(default=256, metadata={"help": "completion budget of the judge"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0 = greedy)"})
    cache_path: str | None = field(default=None, metadata={"help": "SQLite verdict cache; None = no cache"})
    prompt_version: str = field(default=PROMPT_VERSION, metadata={"help": "part of the cache key"})
    extra_body: dict[str, Any] = field(default_factory=dict, metadata={"help": "extra request fields"})
    trust_env: bool = field(default=True, metadata={"help": "honour http(s)_proxy / no_proxy variables"})

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.timeout_s <= 0 or self.max_retries < 0:
            raise ValueError("need concurrency >= 1, timeout_s > 0 and max_retries >= 0")


class _Attempt:
    """Outcome of one HTTP attempt."""

    def __init__(self, kind: str, status: int | None = None, text: str | None = None, retry_after: float | None = None):
        self.kind, self.status, self.text, self.retry_after = kind, status, text, retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None when absent or invalid.

    >>> parse_retry_after("2"), parse_retry_after(None), parse_retry_after("soon")
    (2.0, None, None)
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


@JUDGES.register("openai")
class OpenAIJudge(BaseJudge):
    """LLM judge over an OpenAI-compatible chat completions endpoint."""

    name = "openai"
    config_class = OpenAIJudgeConfig

    def __init__(self, config: OpenAIJudgeConfig) -> None:
        super().__init__()
        self.config = config
        if config.api_key_env and not os.environ.get(config.api_key_env):
            raise ValueError(f"api_key_env names {config.api_key_env!r}, but that environment variable is not set")
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.cache = VerdictCache(config.cache_path) if config.cache_path else None
        handlers = [] if config.trust_env else [urllib.request.ProxyHandler({})]
        self._opener = urllib.request.build_opener(*handlers)
        # Twice the concurrency: a thread abandoned by a timeout must not starve the next request.
        self._pool = concurrent.futures.ThreadPoolExecutor(2 * config.concurrency, thread_name_prefix="judge-http")
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.config.concurrency)
        return self._semaphores[loop]

    def _key(self, item: JudgeItem) -> str:
        cfg = self.config
        return cache_key(cfg.model, cfg.prompt_version, item.question, item.references, item.answer)

    async def score(self, items: list[JudgeItem]) -> list[Verdict]:
        keys = [self._key(item) for item in items]
        unique: dict[str, JudgeItem] = {}
        for key, item in zip(keys, items, strict=True):
            unique.setdefault(key, item)
        if len(items) > len(unique):
            self.counters["deduplicated"] += len(items) - len(unique)
        results = await asyncio.gather(*(self._judge_one(key, item) for key, item in unique.items()))
        by_key = dict(zip(unique, results, strict=True))
        return [by_key[key] for key in keys]

    async def _judge_one(self, key: str, item: JudgeItem) -> Verdict:
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.counters["cache_hits"] += 1
                return Verdict(score=hit[0], raw=hit[1], cached=True)
        cfg = self.config
        body = {
            "model": cfg.model,
            "messages": build_messages(item.question, item.references, item.answer),
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
            "stream": False,
            **cfg.extra_body,
        }
        payload = json.dumps(body).encode("utf-8")
        error = "no attempt made"
        loop = asyncio.get_running_loop()
        for attempt in range(cfg.max_retries + 1):
            async with self._semaphore():
                self.counters["requests"] += 1
                try:
                    outcome = await asyncio.wait_for(
                        loop.run_in_executor(self._pool, self._post, payload), timeout=cfg.timeout_s
                    )
                except asyncio.TimeoutError:
                    outcome = _Attempt("timeout")
            if outcome.kind == "ok":
                score = parse_verdict(outcome.text)
                if score is None:
                    self.counters["parse_failures"] += 1
                    return Verdict(None, "judge output is not a verdict line", outcome.text)
                if self.cache is not None:
                    self.cache.put(key, score, outcome.text)
                return Verdict(score, raw=outcome.text)
            self.counters[_counter_name(outcome)] += 1
            error = _describe(outcome)
            retryable = outcome.kind != "http" or outcome.status in RETRY_STATUS
            if not retryable or attempt == cfg.max_retries:
                break
            self.counters["retries"] += 1
            delay = self._backoff(attempt, outcome)
            logger.debug("judge request failed (%s); retry %d in %.2fs", error, attempt + 1, delay)
            await asyncio.sleep(delay)
        self.counters["failures"] += 1
        logger.warning("judge gave up on an item: %s", error)
        return Verdict(None, error)

    def _backoff(self, attempt: int, outcome: _Attempt) -> float:
        cfg = self.config
        if outcome.retry_after is not None and outcome.status in RETRY_AFTER_STATUS:
            return min(outcome.retry_after, cfg.retry_after_max_s)
        ceiling = min(cfg.backoff_max_s, cfg.backoff_base_s * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter": never zero, never in lockstep

    def _post(self, payload: bytes) -> _Attempt:
        """One blocking HTTP attempt (runs in the thread pool). Reads the key from the environment right here."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key_env:
            headers["Authorization"] = "Bearer " + os.environ.get(self.config.api_key_env, "")
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            return _Attempt("http", exc.code, retry_after=retry_after)
        except TimeoutError:  # socket.timeout is an alias since 3.10
            return _Attempt("timeout")
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return _Attempt("timeout")
            return _Attempt("connection", text=type(exc.reason).__name__)
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            return _Attempt("connection", text=type(exc).__name__)
        try:
            content = json.loads(raw.decode("utf-8"))["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
            return _Attempt("invalid")
        if not isinstance(content, str):
            return _Attempt("invalid")
        return _Attempt("ok", 200, content)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.cache is not None:
            self.cache.close()


def _counter_name(outcome: _Attempt) -> str:
    return {
        "timeout": "timeouts",
        "connection": "connection_errors",
        "invalid": "invalid_responses",
    }.get(outcome.kind, f"http_{outcome.status}")


def _describe(outcome: _Attempt) -> str:
    if outcome.kind == "http":
        return f"HTTP {outcome.status}"
    if outcome.kind == "connection":
        return f"connection error ({outcome.text})"
    return {"timeout": "timeout", "invalid": "response body is not a chat completion"}[outcome.kind]
