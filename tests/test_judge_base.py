"""The judge interface (`adaptune.rl.judges.base`): items and verdicts, the sync wrapper, the counters and the
failure policy (drop / zero / fallback) with the exact verdicts, errors and counters each produces. Plain in-process
judges, no server: written against `make mutate MODULES=judges.base` (issue 19).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest

from adaptune.rl.judges.base import (
    BaseJudge,
    FailurePolicyJudge,
    JudgeItem,
    Verdict,
    config_from_mapping,
    run_sync,
)


class Scripted(BaseJudge):
    """Scores answers from a dict (missing -> a failed verdict); records every batch it was asked."""

    name = "scripted"

    def __init__(self, scores: dict[str, float | None], tag: str = "p") -> None:
        super().__init__()
        self.scores, self.tag, self.batches, self.closed = scores, tag, [], 0

    async def score(self, items):
        self.batches.append([i.answer for i in items])
        self.counters["requests"] += len(items)
        out = []
        for i in items:
            s = self.scores.get(i.answer)
            out.append(Verdict(s, None if s is not None else f"{self.tag}-err-{i.answer}", raw=f"{self.tag}-raw",
                               cached=s is not None))
        return out

    def close(self) -> None:
        self.closed += 1


def items(*answers: str) -> list[JudgeItem]:
    return [JudgeItem("q", "ref", a) for a in answers]


def test_items_and_verdicts():
    assert JudgeItem("q", "Paris", "a").references == ["Paris"]
    assert JudgeItem("q", ("a", 2, 3.5), "a").references == ["a", "2", "3.5"]
    assert JudgeItem("q", [], "a").references == []
    v = Verdict(0.5)
    assert (v.error, v.raw, v.cached, v.failed) == (None, None, False, False)
    assert Verdict(0.0).failed is False and Verdict(None, "e").failed is True


def test_run_sync_outside_and_inside_a_running_loop():
    async def where():
        await asyncio.sleep(0)
        return threading.current_thread()

    assert run_sync(where()) is threading.current_thread()

    async def nested():
        return run_sync(where())

    inner = asyncio.run(nested())
    assert inner is not threading.current_thread()  # a running loop: the coroutine runs on a helper thread


def test_base_judge_plumbing():
    judge = Scripted({"a": 1.0})
    assert BaseJudge.name == "base" and BaseJudge().stats() == {} and repr(BaseJudge()) == "BaseJudge()"
    verdicts = judge.score_sync(iter(items("a", "b")))  # any iterable: passed on as a list
    assert [v.score for v in verdicts] == [1.0, None] and judge.batches == [["a", "b"]]
    stats = judge.stats()
    assert stats == {"requests": 2} and type(stats) is dict
    stats["requests"] = 99
    assert judge.stats() == {"requests": 2}
    assert BaseJudge().close() is None

    judge.config = "cfg"
    assert repr(judge) == "Scripted('cfg')"


def test_policy_refuses_bad_settings():
    with pytest.raises(ValueError, match=r"^on_failure must be 'drop', 'zero' or 'fallback', got 'retry'$"):
        FailurePolicyJudge(Scripted({}), "retry")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^on_failure='fallback' needs a fallback judge \(e.g. fallback: rule\)$"):
        FailurePolicyJudge(Scripted({}), "fallback")
    judge = FailurePolicyJudge(Scripted({}))
    assert judge.on_failure == "drop" and judge.fallback is None and judge.name == "policy"
    FailurePolicyJudge(Scripted({}), "zero", None)


def test_policy_without_failures_returns_the_primary_verdicts_untouched():
    primary = Scripted({"a": 1.0, "b": 0.0})
    for mode in ("drop", "zero"):
        judge = FailurePolicyJudge(primary, mode)
        verdicts = judge.score_sync(items("a", "b"))
        assert verdicts == [Verdict(1.0, None, "p-raw", True), Verdict(0.0, None, "p-raw", True)]
        assert judge.counters == {}


def test_policy_drop_keeps_none_and_counts():
    judge = FailurePolicyJudge(Scripted({"a": 1.0}), "drop")
    verdicts = judge.score_sync(items("a", "x", "y"))
    assert [v.score for v in verdicts] == [1.0, None, None]
    assert verdicts[1].error == "p-err-x"
    assert judge.stats() == {"requests": 3, "drops": 2}


def test_policy_zero_keeps_the_error_and_counts():
    judge = FailurePolicyJudge(Scripted({"a": 1.0}), "zero")
    verdicts = judge.score_sync(items("x", "a", "y"))
    assert verdicts == [Verdict(0.0, "p-err-x", "p-raw", False), Verdict(1.0, None, "p-raw", True),
                        Verdict(0.0, "p-err-y", "p-raw", False)]
    assert judge.stats() == {"requests": 3, "zeroed": 2}


def test_policy_fallback_rejudges_only_the_failed_items():
    primary, fallback = Scripted({"a": 1.0}), Scripted({"x": 0.25}, tag="f")
    judge = FailurePolicyJudge(primary, "fallback", fallback)
    verdicts = judge.score_sync(items("x", "a", "y"))
    assert fallback.batches == [["x", "y"]]
    assert verdicts == [Verdict(0.25, "p-err-x (fell back)", "f-raw", True), Verdict(1.0, None, "p-raw", True),
                        Verdict(None, "p-err-y; fallback: f-err-y", "f-raw", False)]
    assert judge.stats() == {"requests": 3, "fallback/requests": 2, "fallbacks": 2, "drops": 1}
    judge.close()
    judge.close()
    assert (primary.closed, fallback.closed) == (2, 2)
    assert repr(judge) == "FailurePolicyJudge(Scripted(), on_failure='fallback', fallback=Scripted())"


def test_policy_counters_win_over_the_primary_ones():
    primary = Scripted({})
    primary.counters["drops"] = 7
    judge = FailurePolicyJudge(primary, "drop")
    judge.score_sync(items("x"))
    assert judge.stats() == {"requests": 1, "drops": 1}


def test_policy_close_skips_judges_without_close():
    class NoClose:
        async def score(self, items):
            return [Verdict(1.0) for _ in items]

        def stats(self):
            return {"n": 1}

    judge = FailurePolicyJudge(NoClose(), "drop")  # type: ignore[arg-type]
    judge.close()
    assert judge.stats() == {"n": 1}


def test_config_from_mapping():
    @dataclass
    class Cfg:
        a: int = 1
        b: str = "x"

    assert config_from_mapping(Cfg, {"a": 2}) == Cfg(2, "x")
    with pytest.raises(ValueError, match=r"^unknown judge key\(s\) \['c', 'd'\] for Cfg; known: \['a', 'b'\]$"):
        config_from_mapping(Cfg, {"d": 1, "c": 2, "a": 3})
    with pytest.raises(ValueError, match=r"^unknown rule key\(s\) \['z'\]"):
        config_from_mapping(Cfg, {"z": 1}, where="rule")


def test_policy_counters_add_up_over_batches():
    for mode, key in (("drop", "drops"), ("zero", "zeroed")):
        judge = FailurePolicyJudge(Scripted({}), mode)
        judge.score_sync(items("x", "y"))
        judge.score_sync(items("z"))
        assert judge.stats()[key] == 3
    judge = FailurePolicyJudge(Scripted({}), "fallback", Scripted({"x": 1.0}))
    judge.score_sync(items("x", "y"))
    judge.score_sync(items("z"))
    assert (judge.stats()["fallbacks"], judge.stats()["drops"]) == (3, 2)


def test_fallback_returning_too_few_verdicts_is_an_error():
    class Short(BaseJudge):
        async def score(self, items):
            return [Verdict(1.0)] * (len(items) - 1)

    judge = FailurePolicyJudge(Scripted({}), "fallback", Short())
    with pytest.raises(ValueError, match="zip"):  # never a failed verdict left standing silently
        judge.score_sync(items("x", "y"))
