"""The judge interface: items in, verdicts out, counters for logging, and the failure policy.

Why: a reward must not care whether correctness comes from a rule, a hosted LLM, a local model or embeddings, and a
judge that fails (timeout, garbage output) must never look like a correct answer. Every backend implements

    async def score(self, items: list[JudgeItem]) -> list[Verdict]

where `Verdict.score` is a float in [0, 1] or None for "could not judge". `score_sync` wraps it for scripts.
`FailurePolicyJudge` decides what None becomes: `drop` (stay None: the reward drops the group), `zero` (0.0) or
`fallback` (ask another judge, e.g. the rule judge).

    >>> from adaptune.rl.judges import build_judge
    >>> judge = build_judge("rule")
    >>> judge.score_sync([JudgeItem("Capital of France?", "Paris", "paris")])[0].score
    1.0
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")
FailureMode = Literal["drop", "zero", "fallback"]


@dataclass(frozen=True)
class JudgeItem:
    """What is judged: the question, the reference answer(s) and the candidate answer (all plain data)."""

    question: str
    reference: str | Sequence[str]
    answer: str

    @property
    def references(self) -> list[str]:
        """The reference(s) as a list (datasets such as DocVQA give several acceptable answers)."""
        if isinstance(self.reference, str):
            return [self.reference]
        return [str(r) for r in self.reference]


@dataclass(frozen=True)
class Verdict:
    """A judge's decision: `score` in [0, 1], or None when judging failed (then `error` says why)."""

    score: float | None
    error: str | None = None
    raw: str | None = None
    cached: bool = False

    @property
    def failed(self) -> bool:
        return self.score is None


@runtime_checkable
class Judge(Protocol):
    """Anything with an async batched `score` and a `stats()` dict of counters."""

    async def score(self, items: list[JudgeItem]) -> list[Verdict]: ...

    def stats(self) -> dict[str, int]: ...


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop is already running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class BaseJudge:
    """Shared plumbing: a counter dict and the sync wrapper. Subclasses implement `score`."""

    name: str = "base"

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    async def score(self, items: list[JudgeItem]) -> list[Verdict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_sync(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """Blocking `score`; usable in scripts and notebooks."""
        return run_sync(self.score(list(items)))

    def stats(self) -> dict[str, int]:
        """Counters since construction, e.g. {"requests": 12, "cache_hits": 3, "parse_failures": 1}."""
        return dict(self.counters)

    def close(self) -> None:
        """Release resources (thread pools, files); the judge stays usable for stats()."""

    def __repr__(self) -> str:
        config = getattr(self, "config", None)
        return f"{type(self).__name__}({config!r})" if config is not None else f"{type(self).__name__}()"


class FailurePolicyJudge(BaseJudge):
    """Applies the failure policy to another judge's failed verdicts.

    - `drop`: failed verdicts stay `score=None`; rewards turn that into None for the whole group (TRL then gives the
      group's completions zero advantage instead of a made-up reward).
    - `zero`: failed verdicts score 0.0 (the error text is kept).
    - `fallback`: failed items are re-judged by `fallback`; if that fails too they are dropped.
    """

    name = "policy"

    def __init__(self, primary: Judge, on_failure: FailureMode = "drop", fallback: Judge | None = None) -> None:
        super().__init__()
        if on_failure not in ("drop", "zero", "fallback"):
            raise ValueError(f"on_failure must be 'drop', 'zero' or 'fallback', got {on_failure!r}")
        if on_failure == "fallback" and fallback is None:
            raise ValueError("on_failure='fallback' needs a fallback judge (e.g. fallback: rule)")
        self.primary, self.on_failure, self.fallback = primary, on_failure, fallback

    async def score(self, items: list[JudgeItem]) -> list[Verdict]:
        verdicts = list(await self.primary.score(items))
        failed = [i for i, v in enumerate(verdicts) if v.failed]
        if not failed:
            return verdicts
        if self.on_failure == "zero":
            self.counters["zeroed"] += len(failed)
            for i in failed:
                verdicts[i] = dataclasses.replace(verdicts[i], score=0.0)
            return verdicts
        if self.on_failure == "fallback":
            assert self.fallback is not None
            self.counters["fallbacks"] += len(failed)
            second = await self.fallback.score([items[i] for i in failed])
            for i, v in zip(failed, second, strict=True):
                error = f"{verdicts[i].error}; fallback: {v.error}" if v.failed else f"{verdicts[i].error} (fell back)"
                verdicts[i] = Verdict(v.score, error, v.raw, v.cached)
        dropped = sum(v.failed for v in verdicts)
        if dropped:
            self.counters["drops"] += dropped
        return verdicts

    def stats(self) -> dict[str, int]:
        merged = dict(self.primary.stats())
        if self.fallback is not None:
            merged.update({f"fallback/{k}": n for k, n in self.fallback.stats().items()})
        merged.update(self.counters)
        return merged

    def close(self) -> None:
        for judge in (self.primary, self.fallback):
            if judge is not None and hasattr(judge, "close"):
                judge.close()

    def __repr__(self) -> str:
        return f"FailurePolicyJudge({self.primary!r}, on_failure={self.on_failure!r}, fallback={self.fallback!r})"


def config_from_mapping(config_cls: type[T], values: Mapping[str, Any], where: str = "judge") -> T:
    """Build a config dataclass, rejecting unknown keys with a message that names them and the known ones."""
    known = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown} for {config_cls.__name__}; known: {sorted(known)}")
    return config_cls(**dict(values))
