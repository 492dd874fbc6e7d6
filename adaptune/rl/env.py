"""The resolution environment: one `resize_image` tool that hands the model the full-resolution image, once.

Why: VisionThink (docs/methods.md#visionthink) shows the model a downsampled image first and lets it ask for the
full one. TRL 1.16 runs such multi-turn rollouts natively through `GRPOTrainer(environment_factory=...)`: one
environment instance per rollout, `reset(**row)` with every dataset column, and every public method of the class
becomes a tool (its signature and docstring are the schema). The tool surface itself (name, docstring, argument)
lives in `adaptune.budget.protocol.ResizeTool`, shared with the warm-start data and the inference loop.

What an environment records per rollout (read by `adaptune.rl.rewards` and the run's logs):
- `resized`: whether the full image was returned (at most once; a second call gets an error text, not an image);
- `visual_tokens`: the visual tokens the rollout consumed: low-res image, plus the full image when resized
  (computed with `FamilySpec.visual_tokens`, i.e. the processor's own resize rules);
- `low_tokens`, `full_tokens`, `tool_calls`, `errors`.
A row without a full-resolution image is not an error: the tool answers with a text saying so (the rollout goes on
with the low-resolution image), and `EnvStats.missing_full` counts it.
Both images go through `adaptune.data.validate.prepare_image` (the one validation path; a bad image raises
`InputError` naming the row's `id`). A rollout whose full image costs no more tokens than the low one (the
processor's pixel cap) is counted in `EnvStats.no_savings` and warned about once per factory (`PixelCapWarning`).

    factory = make_env_factory(processor, get_family("qwen3_vl"))
    trainer = GRPOTrainer(..., environment_factory=factory)   # dataset rows need `image` (low) and `full_image`
    factory.stats.snapshot()                                  # {"env/rollouts": 64, "env/resize_rate": 0.3, ...}

Only `reset` and `resize_image` are public on `ResolutionEnv`: TRL would expose any other public method as a tool.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..budget.protocol import RESIZE_ACTION, TOOL_RESULT_TEXT, ResizeTool
from ..budget.resolution import NO_UPSCALE, PixelCapWarning, TokenCounter
from ..data.validate import prepare_image
from ..models import FamilySpec

ALREADY_RESIZED = "Error: the full-resolution image was already provided; answer the question now."
MISSING_FULL = "Error: no full-resolution image is available for this question; answer from the image you have."
BAD_ACTION = 'Error: invalid action {action!r}; the only valid call is resize_image(action="resize").'


@dataclass
class EnvStats:
    """Counters shared by all environments of one factory (thread-safe; TRL may call tools from threads)."""

    rollouts: int = 0
    resizes: int = 0
    repeated_calls: int = 0
    bad_actions: int = 0
    missing_full: int = 0
    missing_full_requests: int = 0
    visual_tokens: int = 0
    no_savings: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last: dict[str, int] = field(default_factory=dict, repr=False)

    _warned: bool = field(default=False, repr=False)

    def warn_once(self) -> bool:
        """True the first time only (one pixel-cap warning per factory, not one per rollout)."""
        with self._lock:
            first, self._warned = not self._warned, True
            return first

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def totals(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("rollouts", "resizes", "repeated_calls", "bad_actions",
                                               "missing_full", "missing_full_requests", "visual_tokens",
                                               "no_savings")}

    def snapshot(self, prefix: str = "env/") -> dict[str, float]:
        """Rates since the previous snapshot (per logging window) plus running totals of the error counters."""
        with self._lock:
            now = self.totals()
            delta = {k: now[k] - self._last.get(k, 0) for k in now}
            self._last = dict(now)
        rollouts = max(1, delta["rollouts"])
        out = {
            f"{prefix}rollouts": float(delta["rollouts"]),
            f"{prefix}resize_rate": delta["resizes"] / rollouts,
            f"{prefix}visual_tokens": delta["visual_tokens"] / rollouts,
        }
        for key in ("repeated_calls", "bad_actions", "missing_full", "missing_full_requests", "no_savings"):
            out[f"{prefix}{key}_total"] = float(now[key])
        return out if delta["rollouts"] else {}


class ResolutionEnv(ResizeTool):
    """One rollout's state: the low-resolution image is in the prompt, `resize_image` returns the full one once.

    >>> from adaptune.budget import downsample
    >>> from adaptune.models import build_tiny, get_family
    >>> _, processor = build_tiny("qwen3_vl")
    >>> env = ResolutionEnv(processor, get_family("qwen3_vl"))
    >>> full = Image.new("RGB", (128, 128))
    >>> env.reset(image=downsample(full), full_image=full)
    >>> env.visual_tokens, [b["type"] for b in env.resize_image("resize")], env.visual_tokens
    (4, ['image', 'text'], 20)
    >>> env.resize_image("resize").startswith("Error")
    True
    """

    def __init__(self, processor: Any, family: FamilySpec, image_key: str = "image", full_image_key: str = "full_image",
                 stats: EnvStats | None = None, result_text: str = TOOL_RESULT_TEXT) -> None:
        self._tokens = TokenCounter(family, processor)
        self._image_key, self._full_image_key = image_key, full_image_key
        self._stats = stats if stats is not None else EnvStats()
        self._result_text = result_text
        self._full: Image.Image | None = None
        self.resized = False
        self.low_tokens = self.full_tokens = self.visual_tokens = 0
        self.tool_calls = 0
        self.errors: list[str] = []

    def reset(self, **row: Any) -> None:
        """Start a rollout from a dataset row (TRL passes every column); the prompt is left unchanged."""
        low, full = row.get(self._image_key), row.get(self._full_image_key)
        where = row.get("id")
        self._full = prepare_image(full, where, NO_UPSCALE) if full is not None else None  # geometry kept
        self.resized = False
        self.tool_calls = 0
        self.errors = []
        self.low_tokens = self._tokens(prepare_image(low, where, NO_UPSCALE)) if low is not None else 0
        self.full_tokens = self._tokens(self._full) if self._full is not None else 0
        self.visual_tokens = self.low_tokens
        no_savings = int(self._full is not None and self.low_tokens > 0 and self.full_tokens <= self.low_tokens)
        self._stats.add(rollouts=1, visual_tokens=self.low_tokens, missing_full=int(self._full is None),
                        no_savings=no_savings)
        if no_savings and self._stats.warn_once():
            width, height = self._full.size  # type: ignore[union-attr]
            warnings.warn(
                f"a rollout's full image ({width}x{height}, {self.full_tokens} visual tokens) "
                f"costs no more than its low-resolution view ({self.low_tokens}): the processor's pixel cap shrinks "
                "both to the same size, so resizing saves nothing; downscale the full images to the processor's "
                "max_pixels first (counted in env/no_savings_total)", PixelCapWarning, stacklevel=2)
        return None

    def _error(self, message: str, **counter: int) -> str:
        self.errors.append(message)
        self._stats.add(**counter)
        return message

    def _full_image_blocks(self, action: str) -> list[dict[str, Any]] | str:
        self.tool_calls += 1
        if action != RESIZE_ACTION:
            return self._error(BAD_ACTION.format(action=action), bad_actions=1)
        if self.resized:
            return self._error(ALREADY_RESIZED, repeated_calls=1)
        if self._full is None:
            return self._error(MISSING_FULL, missing_full_requests=1)
        self.resized = True
        self.visual_tokens = self.low_tokens + self.full_tokens
        self._stats.add(resizes=1, visual_tokens=self.full_tokens)
        return [{"type": "image", "image": self._full}, {"type": "text", "text": self._result_text}]


class EnvFactory:
    """A zero-argument callable for `environment_factory`, carrying the shared `stats` and the settings."""

    def __init__(self, processor: Any, family: FamilySpec, image_key: str = "image",
                 full_image_key: str = "full_image", result_text: str = TOOL_RESULT_TEXT) -> None:
        self.processor, self.family = processor, family
        self.image_key, self.full_image_key, self.result_text = image_key, full_image_key, result_text
        self.stats = EnvStats()

    def __call__(self) -> ResolutionEnv:
        return ResolutionEnv(self.processor, self.family, self.image_key, self.full_image_key, self.stats,
                             self.result_text)


def make_env_factory(processor: Any, family: FamilySpec, **options: Any) -> EnvFactory:
    """`EnvFactory(processor, family, **options)`: what `GRPOTrainer(environment_factory=...)` takes."""
    return EnvFactory(processor, family, **options)


EnvironmentFactory = Callable[[], ResolutionEnv]

__all__ = ["ALREADY_RESIZED", "BAD_ACTION", "MISSING_FULL", "EnvFactory", "EnvStats", "ResolutionEnv",
           "make_env_factory"]
