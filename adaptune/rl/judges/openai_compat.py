"""The `openai` judge: any OpenAI-compatible /v1/chat/completions endpoint (vLLM, TGI, `transformers serve`, hosted).

Why: VisionThink judges correctness with an LLM that runs as a service; a service times out, rate-limits, returns
half a body or talks nonsense. This client survives all of that and reports what happened:
- bounded concurrency (a semaphore per event loop) and a per-attempt DEADLINE in wall-clock time (`timeout_s`): it
  covers connecting, sending and reading the whole body, so a server that trickles its reply a byte at a time is cut
  off at the deadline like one that never answers;
- a reply size cap (`max_response_bytes`, default 4 MiB): the body is streamed and the attempt stops reading as soon
  as the cap is passed (counted as `oversized_responses`, not retried);
- retries with exponential backoff and jitter on timeouts, connection errors, 408/429/5xx and broken bodies;
  `Retry-After` (seconds or an HTTP date) is honoured on 429/503, capped by `retry_after_max_s`;
- identical items in a batch are judged once; parsed verdicts go to an on-disk SQLite cache (see cache.py);
- a strict verdict parser (prompt.py): unparseable output is a failure, never a pass;
- `verdict` says how the verdict is read: `generate` (the reply's `VERDICT:` line), `logprobs` (request
  `logprobs`/`top_logprobs` and compare P(CORRECT) and P(INCORRECT) at the verdict token; vLLM and hosted APIs send
  them) or `choice` (the reply is held to one verdict word by a `logit_bias` on its tokens, computed with the served
  model's tokenizer from `tokenizer`; `transformers serve` and vLLM honour it, and it is what makes a small judge give
  a verdict every time). A server that ignores `logprobs` (`transformers serve` does) is counted as
  `logprobs_missing` and the reply's text decides, through the same strict parser;
- the API key is read from the environment variable named by `api_key_env` at request time. It is never stored on
  the judge or config, never logged, never cached, so it cannot appear in repr/str or in the cache file.
Transport: `httpx2` (a base dependency; huggingface_hub needs it too), fully asyncio - no thread pool, so nothing is
left running after a deadline and the interpreter exits as soon as the run does. One client per `score` call.

    # recipe (YAML)
    judge: {name: openai, base_url: "http://127.0.0.1:8000/v1", model: Qwen/Qwen3-1.7B,
            api_key_env: null, cache_path: runs/judge.sqlite, on_failure: fallback, fallback: rule}

    judge = OpenAIJudge(OpenAIJudgeConfig(base_url="http://127.0.0.1:8000/v1", model="m"))
    verdicts = judge.score_sync([JudgeItem("Capital of France?", "Paris", "Paris")])
    judge.stats()  # {"requests": 1, ...}
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from adaptune.registry import JUDGES

from .base import BaseJudge, JudgeItem, Verdict
from .cache import VerdictCache, cache_key
from .constrained import probability_from_top_logprobs, verdict_candidates, verdict_token_index
from .prompt import PROMPT_VERSION, build_messages, parse_choice, parse_verdict

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_STATUS = frozenset({429, 503})
LOGIT_BIAS = 100.0  # the largest bias the OpenAI API accepts (a float: transformers serve refuses ints)


@dataclass
class OpenAIJudgeConfig:
    """Settings of the OpenAI-compatible judge (no secret lives here: only the NAME of the key's variable)."""

    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "endpoint root, ending in /v1"})
    model: str = field(default="gpt-4o", metadata={"help": "model name sent in each request"})
    api_key_env: str | None = field(default=None, metadata={"help": "env variable holding the key; None = no auth"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight at once"})
    timeout_s: float = field(default=30.0, metadata={"help": "wall-clock deadline of one attempt, body included"})
    max_response_bytes: int = field(default=4 * 1024 * 1024, metadata={"help": "larger replies are refused"})
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
    verdict: str = field(default="generate", metadata={
        "help": "'generate': parse the VERDICT line; 'logprobs': P(CORRECT) at the verdict token from the server's "
                "top_logprobs; 'choice': the reply is held to one verdict word by logit_bias (needs tokenizer)"})
    top_logprobs: int = field(default=20, metadata={"help": "logprobs / choice: alternatives asked per token"})
    soft_score: bool = field(default=False, metadata={
        "help": "logprobs / choice: the score is P(CORRECT) in [0, 1] when the server sends logprobs"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "choice: local folder (or hub id) of the served model's tokenizer, to find the verdict tokens"})

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.timeout_s <= 0 or self.max_retries < 0 or self.max_response_bytes < 1:
            raise ValueError("need concurrency >= 1, timeout_s > 0, max_retries >= 0 and max_response_bytes >= 1")
        if self.verdict not in ("generate", "logprobs", "choice"):
            raise ValueError(f"judge key verdict must be 'generate', 'logprobs' or 'choice', got {self.verdict!r}")
        if self.verdict == "choice" and not self.tokenizer:
            raise ValueError("judge key verdict: choice needs tokenizer: the served model's tokenizer folder")
        if self.soft_score and self.verdict == "generate":
            raise ValueError("judge key soft_score needs verdict: logprobs or choice (text has no probability)")
        if not 1 <= self.top_logprobs <= 20:
            raise ValueError(f"judge key top_logprobs must be in 1..20, got {self.top_logprobs}")


class _Attempt:
    """Outcome of one HTTP attempt."""

    def __init__(self, kind: str, status: int | None = None, text: str | None = None, retry_after: float | None = None,
                 logprobs: Any = None):
        self.kind, self.status, self.text, self.retry_after = kind, status, text, retry_after
        self.logprobs = logprobs


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
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._logit_bias: dict[str, float] = {}
        self._choice_tokens = 0
        if config.verdict == "choice":
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(config.tokenizer)
            cands = verdict_candidates(tok)
            allowed = cands.all_token_ids | ({tok.eos_token_id} if tok.eos_token_id is not None else set())
            self._logit_bias = {str(t): LOGIT_BIAS for t in sorted(allowed)}
            self._choice_tokens = max(len(s) for s in cands.correct + cands.incorrect) + 1  # + end of turn

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.config.concurrency)
        return self._semaphores[loop]

    def _key(self, item: JudgeItem) -> str:
        cfg = self.config
        version = cfg.prompt_version
        if cfg.verdict != "generate":  # another way of reading the verdict is another cache entry
            version += f"/{cfg.verdict}" + ("/soft" if cfg.soft_score else "")
        return cache_key(cfg.model, version, item.question, item.references, item.answer)

    def _body(self, item: JudgeItem) -> dict[str, Any]:
        cfg = self.config
        reply = "word" if cfg.verdict == "choice" else "line"
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": build_messages(item.question, item.references, item.answer, reply=reply),
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
            "stream": False,
        }
        if cfg.verdict != "generate":
            body.update(logprobs=True, top_logprobs=cfg.top_logprobs)
        if cfg.verdict == "choice":
            body.update(logit_bias=self._logit_bias, max_tokens=self._choice_tokens)
        return {**body, **cfg.extra_body}

    def _decide(self, text: str | None, logprobs: Any) -> float | None:
        """The score from a reply: the strict parser first (no verdict text, no verdict), then logprobs if asked."""
        cfg = self.config
        hard = parse_choice(text) if cfg.verdict == "choice" else parse_verdict(text)
        if hard is None or cfg.verdict == "generate":
            return hard
        probability = self._probability(text or "", logprobs)
        if probability is None:
            self.counters["logprobs_missing"] += 1
            return hard
        return probability if cfg.soft_score else float(probability >= 0.5)

    def _probability(self, text: str, logprobs: Any) -> float | None:
        try:
            entries = logprobs["content"]
            index = verdict_token_index([e["token"] for e in entries], text, word_only=self.config.verdict == "choice")
            return None if index is None else probability_from_top_logprobs(entries[index].get("top_logprobs") or [])
        except (TypeError, KeyError, AttributeError, IndexError):  # absent or malformed: the text decides
            return None

    async def score(self, items: list[JudgeItem]) -> list[Verdict]:
        keys = [self._key(item) for item in items]
        unique: dict[str, JudgeItem] = {}
        for key, item in zip(keys, items, strict=True):
            unique.setdefault(key, item)
        if len(items) > len(unique):
            self.counters["deduplicated"] += len(items) - len(unique)
        by_key: dict[str, Verdict] = {}
        misses: dict[str, JudgeItem] = {}
        for key, item in unique.items():
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                self.counters["cache_hits"] += 1
                by_key[key] = Verdict(score=hit[0], raw=hit[1], cached=True)
            else:
                misses[key] = item
        if misses:  # one client per call: it lives on this call's event loop and is closed before returning
            import httpx2

            cfg = self.config
            limits = httpx2.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(cfg.timeout_s), limits=limits,
                                          trust_env=cfg.trust_env, follow_redirects=False) as client:
                results = await asyncio.gather(*(self._judge_one(client, key, item) for key, item in misses.items()))
            by_key.update(zip(misses, results, strict=True))
        return [by_key[key] for key in keys]

    async def _judge_one(self, client: Any, key: str, item: JudgeItem) -> Verdict:
        cfg = self.config
        payload = json.dumps(self._body(item)).encode("utf-8")
        error = "no attempt made"
        for attempt in range(cfg.max_retries + 1):
            async with self._semaphore():
                self.counters["requests"] += 1
                try:  # the deadline covers the whole attempt: connect, send, and every byte of the body
                    outcome = await asyncio.wait_for(self._post(client, payload), timeout=cfg.timeout_s)
                except asyncio.TimeoutError:
                    outcome = _Attempt("timeout")
            if outcome.kind == "ok":
                score = self._decide(outcome.text, outcome.logprobs)
                if score is None:
                    self.counters["parse_failures"] += 1
                    return Verdict(None, "judge output is not a verdict line", outcome.text)
                if self.cache is not None:
                    self.cache.put(key, score, outcome.text)
                return Verdict(score, raw=outcome.text)
            self.counters[_counter_name(outcome)] += 1
            error = _describe(outcome)
            retryable = outcome.kind not in ("http", "oversized") or outcome.status in RETRY_STATUS
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

    async def _post(self, client: Any, payload: bytes) -> _Attempt:
        """One HTTP attempt, streamed so that the size cap holds. Reads the key from the environment right here."""
        import httpx2

        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key_env:
            headers["Authorization"] = "Bearer " + os.environ.get(self.config.api_key_env, "")
        cap = self.config.max_response_bytes
        try:
            async with client.stream("POST", self.url, content=payload, headers=headers) as response:
                if response.status_code >= 400:
                    return _Attempt("http", response.status_code,
                                    retry_after=parse_retry_after(response.headers.get("Retry-After")))
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.strip().isdigit() and int(declared) > cap:
                    return _Attempt("oversized", text=f"declared {int(declared)} bytes")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > cap:
                        return _Attempt("oversized", text=f"more than {cap} bytes")
                    chunks.append(chunk)
                raw = b"".join(chunks)
        except httpx2.TimeoutException:
            return _Attempt("timeout")
        except (httpx2.HTTPError, OSError) as exc:  # transport and protocol errors alike
            return _Attempt("connection", text=type(exc).__name__)
        try:
            choice = json.loads(raw.decode("utf-8"))["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
            return _Attempt("invalid")
        if not isinstance(content, str):
            return _Attempt("invalid")
        return _Attempt("ok", 200, content, logprobs=choice.get("logprobs"))

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _counter_name(outcome: _Attempt) -> str:
    return {
        "timeout": "timeouts",
        "connection": "connection_errors",
        "invalid": "invalid_responses",
        "oversized": "oversized_responses",
    }.get(outcome.kind, f"http_{outcome.status}")


def _describe(outcome: _Attempt) -> str:
    if outcome.kind == "http":
        return f"HTTP {outcome.status}"
    if outcome.kind == "connection":
        return f"connection error ({outcome.text})"
    if outcome.kind == "oversized":
        return f"reply larger than max_response_bytes ({outcome.text})"
    return {"timeout": "timeout (deadline passed)", "invalid": "response body is not a chat completion"}[outcome.kind]
