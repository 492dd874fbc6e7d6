"""The resolution environment's bookkeeping (`adaptune.rl.env`) with exact numbers: per-rollout state, every error
counter, the pixel-cap (no savings) rule and its one warning, the shared stats and their windowed snapshot, and the
factory's settings. The family is a stand-in whose token count is a known function of the image size (tests/test_env.py
runs the real tiny processor). Written against `make mutate MODULES=env` (issue 19).
"""

from __future__ import annotations

import threading
import warnings

import pytest
from PIL import Image

from adaptune.budget.protocol import TOOL_RESULT_TEXT
from adaptune.budget.resolution import PixelCapWarning
from adaptune.data.validate import InputError
from adaptune.rl import env as env_module
from adaptune.rl.env import (
    ALREADY_RESIZED,
    BAD_ACTION,
    MISSING_FULL,
    EnvFactory,
    EnvStats,
    ResolutionEnv,
    make_env_factory,
)


class Family:
    """One token per 8x8 patch, after a pixel cap of `cap` pixels."""

    def __init__(self, cap: int = 10**9) -> None:
        self.cap = cap

    def visual_tokens(self, processor, height, width):
        return max(1, min(height * width, self.cap) // 64)


LOW, FULL = Image.new("RGB", (16, 8)), Image.new("RGB", (32, 16), (9, 9, 9))  # 2 and 8 tokens


def env(**kwargs):
    return ResolutionEnv(None, Family(kwargs.pop("cap", 10**9)), **kwargs)


def test_messages():
    assert ALREADY_RESIZED == "Error: the full-resolution image was already provided; answer the question now."
    assert MISSING_FULL == ("Error: no full-resolution image is available for this question; answer from the image "
                            "you have.")
    assert BAD_ACTION.format(action="zoom") == ("Error: invalid action 'zoom'; the only valid call is "
                                                'resize_image(action="resize").')


def test_fresh_env_state_and_reset():
    e = env()
    assert (e.resized, e.low_tokens, e.full_tokens, e.visual_tokens, e.tool_calls, e.errors) == (False, 0, 0, 0, 0, [])
    assert env().resize_image("resize") == MISSING_FULL  # before any reset: no full image
    assert e.reset(image=LOW, full_image=FULL, id="r1") is None
    assert (e.low_tokens, e.full_tokens, e.visual_tokens) == (2, 8, 2)
    e.reset(image=None, full_image=FULL)
    assert (e.low_tokens, e.full_tokens, e.visual_tokens) == (0, 8, 0)
    with pytest.raises(InputError, match="^row r9: unreadable"):
        e.reset(image=b"xx", full_image=FULL, id="r9")
    with pytest.raises(InputError, match="^row r8: unreadable"):
        e.reset(image=LOW, full_image=b"xx", id="r8")
    with pytest.warns(PixelCapWarning):  # 1 token each: no savings
        e.reset(image=Image.new("RGB", (4, 4)), full_image=Image.new("RGB", (8, 8)))  # no upscaling to 32 px
    assert (e.low_tokens, e.full_tokens) == (1, 1)


def test_resize_counts_and_returns_the_full_image():
    stats = EnvStats()
    e = env(stats=stats, result_text="here")
    e.reset(image=LOW, full_image=FULL)
    blocks = e.resize_image("resize")
    assert blocks == [{"type": "image", "image": e._full}, {"type": "text", "text": "here"}]
    assert blocks[0]["image"].getpixel((0, 0)) == (9, 9, 9) and blocks[0]["image"].size == (32, 16)
    assert (e.resized, e.visual_tokens, e.tool_calls, e.errors) == (True, 10, 1, [])
    assert stats.totals() == {"rollouts": 1, "resizes": 1, "repeated_calls": 0, "bad_actions": 0, "missing_full": 0,
                              "missing_full_requests": 0, "visual_tokens": 10, "no_savings": 0}
    assert e.resize_image("resize") == ALREADY_RESIZED
    assert e.resize_image("zoom") == BAD_ACTION.format(action="zoom")  # the action is checked first
    assert (e.tool_calls, e.visual_tokens, e.errors) == (3, 10, [ALREADY_RESIZED, BAD_ACTION.format(action="zoom")])
    assert (stats.repeated_calls, stats.bad_actions, stats.resizes, stats.visual_tokens) == (1, 1, 1, 10)
    assert env().reset(image=LOW, full_image=FULL) is None
    default = env()
    default.reset(image=LOW, full_image=FULL)
    assert default.resize_image("resize")[1] == {"type": "text", "text": TOOL_RESULT_TEXT}


def test_missing_full_image_and_custom_keys():
    stats = EnvStats()
    e = env(stats=stats, image_key="low", full_image_key="high")
    e.reset(low=LOW, high=None, image=FULL)
    assert (e.low_tokens, e.full_tokens) == (2, 0)
    assert e.resize_image("resize") == MISSING_FULL
    assert e.resize_image("resize") == MISSING_FULL  # not resized: asking again is the same error
    assert (stats.missing_full, stats.missing_full_requests, stats.resizes, e.resized) == (1, 2, 0, False)
    e.reset(low=LOW, high=FULL)
    assert e.resize_image("resize")[0]["image"].size == (32, 16)
    assert (e.tool_calls, e.errors) == (1, [])  # reset clears the previous rollout's calls and errors


def test_no_savings_is_counted_and_warned_once_per_stats():
    stats = EnvStats()
    capped = Image.new("RGB", (64, 64))
    with pytest.warns(PixelCapWarning) as caught:
        for _ in range(2):
            e = env(stats=stats, cap=16 * 8)  # both images capped to 2 tokens
            e.reset(image=LOW, full_image=capped)
    assert len(caught) == 1 and stats.no_savings == 2
    message = str(caught[0].message)
    assert message.startswith("a rollout's full image (64x64, 2 visual tokens) costs no more than its "
                              "low-resolution view (2)")
    assert ("the processor's pixel cap shrinks both to the same size, so resizing saves nothing; downscale the full "
            "images to the processor's max_pixels first (counted in env/no_savings_total)") in message
    assert caught[0].filename != env_module.__file__  # stacklevel=2: reported at the caller, not inside reset
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = EnvStats()
        env(stats=quiet).reset(image=LOW, full_image=FULL)                  # saves: 2 < 8
        env(stats=quiet, cap=1).reset(image=None, full_image=capped)        # no low image: not counted
        env(stats=quiet, cap=1).reset(image=LOW, full_image=None)           # no full image: not counted
        assert quiet.no_savings == 0
    class NoTokens:
        def visual_tokens(self, processor, height, width):
            return 0

    zero = EnvStats()
    ResolutionEnv(None, NoTokens(), stats=zero).reset(image=None, full_image=FULL)  # 0 <= 0, but no low view
    assert zero.no_savings == 0
    fewer = EnvStats()
    with pytest.warns(PixelCapWarning):
        env(stats=fewer).reset(image=FULL, full_image=LOW)  # the "full" image is smaller: counted too
    assert fewer.no_savings == 1


def test_stats_warn_once_add_and_thread_safety():
    stats = EnvStats()
    assert stats.warn_once() is True and stats.warn_once() is False and stats.warn_once() is False
    stats.add(resizes=2, visual_tokens=5)
    stats.add(resizes=1)
    assert (stats.resizes, stats.visual_tokens) == (3, 5)
    threads = [threading.Thread(target=lambda: [stats.add(rollouts=1) for _ in range(500)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.rollouts == 2000


def test_snapshot_reports_window_rates_and_running_totals():
    stats = EnvStats()
    assert stats.snapshot() == {}
    stats.add(rollouts=4, resizes=1, visual_tokens=30, repeated_calls=2, bad_actions=3, missing_full=1,
              missing_full_requests=1, no_savings=1)
    assert stats.snapshot() == {"env/rollouts": 4.0, "env/resize_rate": 0.25, "env/visual_tokens": 7.5,
                                "env/repeated_calls_total": 2.0, "env/bad_actions_total": 3.0,
                                "env/missing_full_total": 1.0, "env/missing_full_requests_total": 1.0,
                                "env/no_savings_total": 1.0}
    stats.add(rollouts=1, resizes=1, visual_tokens=3, bad_actions=1)
    snap = stats.snapshot(prefix="x/")
    assert snap["x/rollouts"] == 1.0 and snap["x/resize_rate"] == 1.0 and snap["x/visual_tokens"] == 3.0
    assert snap["x/bad_actions_total"] == 4.0 and snap["x/repeated_calls_total"] == 2.0  # totals, not windowed
    stats.add(bad_actions=1)
    assert stats.snapshot() == {}  # no rollout in the window: nothing to log


def test_factory_passes_its_settings_and_shares_stats():
    factory = make_env_factory("proc", Family(), image_key="lo", full_image_key="hi", result_text="t")
    assert isinstance(factory, EnvFactory)
    settings = (factory.processor, factory.image_key, factory.full_image_key, factory.result_text)
    assert settings == ("proc", "lo", "hi", "t")
    a, b = factory(), factory()
    assert a is not b and a._stats is factory.stats and b._stats is factory.stats
    a.reset(lo=LOW, hi=FULL)
    assert a.resize_image("resize")[1]["text"] == "t"
    b.reset(lo=LOW, hi=None)
    assert factory.stats.totals()["rollouts"] == 2 and factory.stats.missing_full == 1
    plain = EnvFactory("p", Family())
    assert (plain.image_key, plain.full_image_key, plain.result_text) == ("image", "full_image", TOOL_RESULT_TEXT)
    plain().reset(image=LOW, full_image=FULL)
    assert plain.stats.rollouts == 1
