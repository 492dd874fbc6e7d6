"""VisionThink rewards as TRL reward functions: accuracy (via a judge), format, resolution penalty, and their sum.

TRL's convention is a list of reward functions with `GRPOConfig.reward_weights`: `make_visionthink_rewards` returns
the three parts as a `RewardSet` (funcs + weights) sharing one `VisionThinkScorer`, so the judge is asked once per
batch, a dropped group is None in every part, the penalty sees its group, and TRL logs `rewards/<part>/mean` itself.
`make_visionthink_reward` is the same reward as one summed callable (equal to the weighted parts, tested).
`load_reward_object("package.module:function")` / `("path/file.py:function")` finds a user's reward.

Why: VisionThink teaches a VLM to answer from a half-resolution image or call `resize_image` for the full one. The
reward is `accuracy + 0.5 * format - penalty`, where the penalty compares, within each group of rollouts of one
prompt, how many correct answers came without vs. after resizing (docs/methods.md#visionthink).

How: each reward is a plain callable `f(prompts, completions, **kwargs) -> list[float | None]`, the calling
convention of `trl.GRPOTrainer` 1.16, which passes `prompts`, `completions` (strings, or message lists that include
the tool-call and tool-response turns), `completion_ids`, every dataset column, `trainer_state`, `log_extra`,
`log_metric` and, with `environment_factory`, `environments`. Rewards with parameters are factories; those that call
a judge are `async` (TRL runs them on its event loop; elsewhere use `asyncio.run`). All are registered in
`adaptune.registry.REWARDS` as factories: `REWARDS.get("visionthink")(judge="rule", num_generations=8)`.

Failures: a group in which any judge verdict failed (after the judge's own failure policy) gets `None` for every
completion; TRL turns that into NaN, leaves it out of the group baseline and gives it zero advantage.
Dropped groups abort the run: when more than `max_dropped_share` (default 0.5) of the groups of the last
`dropped_window` (default 5) reward calls were dropped, the reward raises `DroppedGroupsError` naming the share, the
judge's counters and the knobs (a judge that never parses would otherwise train nothing for the whole run and exit 0).
`max_dropped_share: null` in `grpo.reward` turns the guard off.
Zero-variance groups: TRL 1.16 does NOT drop groups whose reward std is ~0 (no DAPO-style dynamic sampling); their
advantages are exactly 0, so they add no policy gradient but still count in the loss normaliser. We log the share of
such groups as `visionthink/zero_std_groups` instead of filtering.

    >>> import asyncio
    >>> reward = make_visionthink_reward(judge="rule", num_generations=2)
    >>> asyncio.run(reward(prompts=["q", "q"], completions=[
    ...     "<think>clear</think><answer>4</answer>", "<think>hm</think><answer>5</answer>"], answer=["4", "4"]))
    [1.5, 0.5]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from adaptune.registry import REWARDS

from ..budget.answers import count_tool_calls, extract_answer
from ..budget.protocol import RESIZE_ARGUMENTS, TOOL_NAME, check_format
from .judges import Judge, JudgeItem, build_judge

RewardFn = Callable[..., Any]
Variant = Literal["paper", "official", "rate"]


@dataclass(frozen=True)
class PenaltyConfig:
    """The group-level resolution penalty.

    r = C_direct / (C_direct + C_high) counts the CORRECT answers of a group given at low resolution (no resize) and
    after resizing.
    - `paper` (default): P = weight * [direct * 1(r < theta) + resized * 1(r >= theta)] for every rollout, correct or
      not. When low resolution rarely suffices, answering directly is discouraged; otherwise resizing is.
    - `official` (the released code): only correct answers are penalised, resized ones always and direct ones when
      r < theta: P = weight * correct * [resized + direct * 1(r < theta)].
    - `rate` (adaptune): as `paper`, but r compares accuracy RATES, r = p_direct / (p_direct + p_high) with
      p = correct / attempts of each branch; no penalty unless the group tried both branches. The count ratio
      depends on how the group split: a group that resizes 7 times out of 8 has r <= 1/8 < theta even when both
      branches are always right, so `paper` then penalises direct answers and drives a policy that starts out
      resizing often into always resizing (measured on the embedded default: resize rate 0.72 -> 0.90 in 130
      steps, coarse questions included). Rates remove that bias.
    We default to `paper`: it is the method as published and analysed, and the official variant gives correct
    direct and correct resized answers the same reward whenever r < theta, so it cannot push the policy towards the
    resolution that works, while leaving wrong direct answers unpenalised.
    When C_direct + C_high = 0 (no correct answer in the group), r is undefined: `undefined_ratio=None` (default)
    applies no penalty - there is no evidence about which resolution suffices; a number is used as r instead
    (0.0 encourages resizing after total failure).
    """

    weight: float = 0.1
    theta: float = 0.2
    variant: Variant = "paper"
    undefined_ratio: float | None = None
    correct_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.variant not in get_args(Variant):
            raise ValueError(f"variant must be one of {get_args(Variant)}, got {self.variant!r}")
        if not 0.0 <= self.theta <= 1.0:
            raise ValueError(f"theta must be in [0, 1], got {self.theta}")


def resolution_penalties(
    correct: Sequence[bool], resized: Sequence[bool], config: PenaltyConfig = PenaltyConfig()
) -> list[float]:
    """Penalties for ONE group of rollouts.

    >>> resolution_penalties([True, False, True, False], [False, False, True, True])  # r = 0.5 >= 0.2
    [0.0, 0.0, 0.1, 0.1]
    >>> resolution_penalties([False, True, True], [False, True, True])  # r = 0 < 0.2: direct is penalised
    [0.1, 0.0, 0.0]
    >>> resolution_penalties([False, True, True], [False, True, True], PenaltyConfig(variant="official"))
    [0.0, 0.1, 0.1]
    >>> all_right, mostly_resized = [True] * 6, [False] + [True] * 5   # both branches always right
    >>> resolution_penalties(all_right, mostly_resized)  # paper: r = 1/6 < 0.2, so the direct answer is penalised
    [0.1, 0.0, 0.0, 0.0, 0.0, 0.0]
    >>> resolution_penalties(all_right, mostly_resized, PenaltyConfig(variant="rate"))  # rates: r = 1/2
    [0.0, 0.1, 0.1, 0.1, 0.1, 0.1]
    """
    if len(correct) != len(resized):
        raise ValueError("correct and resized must have the same length")
    c_direct = sum(c and not r for c, r in zip(correct, resized, strict=True))
    c_high = sum(c and r for c, r in zip(correct, resized, strict=True))
    if config.variant == "rate":
        n_high = sum(bool(r) for r in resized)
        n_direct = len(resized) - n_high
        if n_direct == 0 or n_high == 0:
            return [0.0] * len(correct)
        c_direct, c_high = c_direct / n_direct, c_high / n_high  # accuracy rates; the ratio below is then unbiased
    if c_direct + c_high == 0:
        if config.undefined_ratio is None:
            return [0.0] * len(correct)
        ratio = config.undefined_ratio
    else:
        ratio = c_direct / (c_direct + c_high)
    low = ratio < config.theta
    out = []
    for c, r in zip(correct, resized, strict=True):
        # paper: every rollout of the disfavoured kind; official: correct ones only, resized always.
        hit = ((not r and low) or (r and not low)) if config.variant != "official" else (c and (r or low))
        out.append(config.weight if hit else 0.0)
    return out


def group_slices(n: int, num_generations: int | None, prompts: Sequence[Any] | None = None) -> list[slice]:
    """Split n completions into groups: chunks of `num_generations` when it divides n, else runs of equal prompts.

    TRL puts the `num_generations` completions of a prompt next to each other. Under multi-process training a
    process can hold part of a group: set the per-device generation batch to a multiple of `num_generations`.

    >>> group_slices(4, 2)
    [slice(0, 2, None), slice(2, 4, None)]
    >>> group_slices(3, None, ["a", "a", "b"])
    [slice(0, 2, None), slice(2, 3, None)]
    """
    if num_generations and n % num_generations == 0:
        return [slice(i, i + num_generations) for i in range(0, n, num_generations)]
    if prompts is None:
        return [slice(0, n)]
    slices, start = [], 0
    for i in range(1, n + 1):
        if i == n or prompts[i] != prompts[start]:
            slices.append(slice(start, i))
            start = i
    return slices


def _prompt_text(prompt: Any) -> str:
    """The last user message of a conversational prompt (its text parts), or the prompt string itself."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(list(prompt or [])):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            parts = [p.get("text", "") for p in content or [] if isinstance(p, Mapping) and p.get("type") == "text"]
            return "\n".join(parts)
    return ""


def _as_references(value: Any) -> str | list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return "" if value is None else str(value)


async def judge_completions(
    judge: Judge,
    completions: Sequence[Any],
    prompts: Sequence[Any] | None,
    kwargs: Mapping[str, Any],
    question_key: str = "question",
    reference_key: str = "answer",
) -> list[float | None]:
    """Scores of the extracted answers; no answer -> 0.0 without asking the judge; judge failure -> None."""
    if reference_key not in kwargs:
        raise KeyError(f"reward needs the reference column {reference_key!r}; columns: {sorted(kwargs)}")
    references = kwargs[reference_key]
    questions = kwargs.get(question_key) or [_prompt_text(p) for p in (prompts or [""] * len(completions))]
    answers = [extract_answer(c) for c in completions]
    todo = [i for i, a in enumerate(answers) if a]
    items = [JudgeItem(str(questions[i]), _as_references(references[i]), answers[i] or "") for i in todo]
    verdicts = await judge.score(items) if items else []
    scores: list[float | None] = [0.0] * len(completions)
    for i, verdict in zip(todo, verdicts, strict=True):
        scores[i] = verdict.score
    return scores


def drop_failed_groups(scores: list[float | None], slices: Sequence[slice]) -> list[float | None]:
    """None for every member of a group that contains a None (the judge failed on part of it)."""
    out = list(scores)
    for s in slices:
        if any(v is None for v in out[s]):
            out[s] = [None] * len(out[s])
    return out


class DroppedGroupsError(RuntimeError):
    """Too many reward groups were dropped because the judge failed: training would learn nothing."""


class DropGuard:
    """Rolling share of dropped groups over the last `window` reward calls; raises above `max_share`.

    >>> guard = DropGuard(max_share=0.5, window=2)
    >>> guard.update(dropped=1, total=2)   # 1/2 so far, window not full
    >>> guard.update(dropped=2, total=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    adaptune.rl.rewards.DroppedGroupsError: 75% of reward groups (3 of 4) were dropped over the last 2 reward calls ...
    """

    def __init__(self, max_share: float | None = 0.5, window: int = 5, name: str = "reward") -> None:
        if max_share is not None and not 0.0 <= float(max_share) < 1.0:
            raise ValueError(f"max_dropped_share must be in [0, 1) or null (no abort), got {max_share!r}")
        if int(window) < 1:
            raise ValueError(f"dropped_window must be >= 1, got {window!r}")
        self.max_share, self.window, self.name = max_share, int(window), name
        self.history: deque[tuple[int, int]] = deque(maxlen=self.window)

    def observe(self, scores: Sequence[float | None], slices: Sequence[slice],
                judge_stats: Mapping[str, int] | None = None) -> None:
        """`update` from one reward call's scores after `drop_failed_groups` (a dropped group is all None)."""
        dropped = sum(scores[s.start] is None for s in slices if s.stop > s.start)
        self.update(dropped, len(slices), judge_stats)

    def update(self, dropped: int, total: int, judge_stats: Mapping[str, int] | None = None) -> None:
        if total <= 0:
            return
        self.history.append((dropped, total))
        if self.max_share is None or len(self.history) < self.window:
            return
        n_dropped, n_total = sum(d for d, _ in self.history), sum(t for _, t in self.history)
        share = n_dropped / n_total
        if share > self.max_share:
            raise DroppedGroupsError(
                f"{share:.0%} of reward groups ({n_dropped} of {n_total}) were dropped over the last {self.window} "
                f"reward calls because the judge could not score them, above grpo.reward.max_dropped_share="
                f"{self.max_share}; the run would train on nothing. Judge counters: {dict(judge_stats or {})}. "
                "Check the judge (endpoint, model, verdict format), use judge.on_failure: fallback, or raise "
                "max_dropped_share / dropped_window (null turns the abort off).")


def rollout_resized(completions: Sequence[Any], environments: Sequence[Any] | None, tool_name: str) -> list[bool]:
    """Whether each rollout got the high-resolution image: `environments[i].resized` if present, else a tool call."""
    flags = []
    for i, completion in enumerate(completions):
        env = environments[i] if environments is not None and i < len(environments) else None
        if env is not None and hasattr(env, "resized"):
            flags.append(bool(env.resized))
        else:
            flags.append(count_tool_calls(completion, tool_name) > 0)
    return flags


def _named(fn: RewardFn, name: str, **attrs: Any) -> RewardFn:
    fn.__name__ = fn.__qualname__ = name
    for key, value in attrs.items():
        setattr(fn, key, value)
    return fn


@REWARDS.register("accuracy")
def make_accuracy_reward(
    judge: Any = None, question_key: str = "question", reference_key: str = "answer", drop_groups: bool = True,
    num_generations: int | None = None, max_dropped_share: float | None = 0.5, dropped_window: int = 5,
) -> RewardFn:
    """Judge score of the final `<answer>` against the `reference_key` column (async; groups dropped on failure,
    the run aborted by `DroppedGroupsError` when too many are, see `DropGuard`)."""
    the_judge = build_judge(judge)
    guard = DropGuard(max_dropped_share, dropped_window, "accuracy")

    async def accuracy(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any):
        scores = await judge_completions(the_judge, completions, prompts, kwargs, question_key, reference_key)
        if drop_groups:
            slices = group_slices(len(completions), num_generations, prompts)
            scores = drop_failed_groups(scores, slices)
            guard.observe(scores, slices, the_judge.stats())
        return scores

    return _named(accuracy, "accuracy", judge=the_judge)


@REWARDS.register("format")
def make_format_reward(
    tool_name: str = TOOL_NAME, tool_arguments: Mapping[str, Any] | None = RESIZE_ARGUMENTS, max_tool_calls: int = 1
) -> RewardFn:
    """1.0 when the whole rollout follows the VisionThink format (see `adaptune.budget.protocol.check_format`), else 0.0."""

    def format_reward(completions: Sequence[Any] = (), **kwargs: Any) -> list[float]:
        return [float(check_format(c, tool_name, tool_arguments, max_tool_calls)) for c in completions]

    return _named(format_reward, "format")


@REWARDS.register("resolution_penalty")
def make_resolution_penalty(
    judge: Any = None, num_generations: int | None = None, penalty: PenaltyConfig | Mapping[str, Any] | None = None,
    question_key: str = "question", reference_key: str = "answer", tool_name: str = TOOL_NAME,
) -> RewardFn:
    """The group penalty as a NEGATIVE reward (-P), for recipes that list the components separately."""
    the_judge = build_judge(judge)
    config = penalty if isinstance(penalty, PenaltyConfig) else PenaltyConfig(**dict(penalty or {}))

    async def resolution_penalty(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any):
        scores = await judge_completions(the_judge, completions, prompts, kwargs, question_key, reference_key)
        resized = rollout_resized(completions, kwargs.get("environments"), tool_name)
        out: list[float | None] = [None] * len(completions)
        for s in group_slices(len(completions), num_generations, prompts):
            if any(v is None for v in scores[s]):
                continue
            correct = [v >= config.correct_threshold for v in scores[s]]  # type: ignore[operator]
            out[s] = [-p for p in resolution_penalties(correct, resized[s], config)]
        return out

    return _named(resolution_penalty, "resolution_penalty", judge=the_judge, penalty=config)


@REWARDS.register("resolution_label")
def make_resolution_label_reward(
    columns: str | Sequence[str] = "label",
    needs_full: Sequence[Any] = ("needs_high_res",),
    low_suffices: Sequence[Any] = ("low_res_suffices",),
    tool_name: str = TOOL_NAME,
) -> RewardFn:
    """-1.0 for a rollout whose resolution decision contradicts its row's label, else 0.0 (weight it in the recipe).

    A row's label is the value of `columns` (several columns: their values joined with "/"), compared as text: in
    `needs_full`, answering without the tool contradicts it; in `low_suffices`, resizing does; any other value
    (`drop`, a missing column) gives 0.0. The default reads `adaptune label-resolution`'s `label` column. Unlike the
    group penalty, which infers from the group's own rollouts which resolution suffices, this term uses labels the
    data already carries (VisionThink's `info.use_tool`, GlyphQA's digit sizes), so it still acts in a group that
    never tried one of the two branches.

    >>> reward = make_resolution_label_reward(["kind", "digit_size"], needs_full=["fine/small"],
    ...                                       low_suffices=["fine/large", "coarse/small", "coarse/large"])
    >>> calls = '<tool_call>{"name": "resize_image", "arguments": {}}</tool_call>'
    >>> reward(completions=[calls, "<answer>7</answer>", calls, "<answer>7</answer>"],
    ...        kind=["fine", "fine", "fine", "coarse"], digit_size=["small", "small", "large", "large"])
    [0.0, -1.0, -1.0, 0.0]
    """
    names = [columns] if isinstance(columns, str) else list(columns)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise ValueError(f"columns: a column name or a non-empty list of names, got {columns!r}")
    full, low = {str(v) for v in needs_full}, {str(v) for v in low_suffices}
    if full & low:
        raise ValueError(f"needs_full and low_suffices share {sorted(full & low)}")

    def resolution_label(completions: Sequence[Any] = (), **kwargs: Any) -> list[float]:
        resized = rollout_resized(completions, kwargs.get("environments"), tool_name)
        values = [kwargs.get(c) for c in names]
        out = []
        for i, r in enumerate(resized):
            if any(v is None or i >= len(v) for v in values):
                out.append(0.0)
                continue
            label = "/".join(str(v[i]) for v in values)
            out.append(-1.0 if (label in full and not r) or (label in low and r) else 0.0)
        return out

    return _named(resolution_label, "resolution_label")


def _mean(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def _std(values: Sequence[float]) -> float:
    mu = sum(values) / len(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / max(1, len(values) - 1))


@dataclass
class ScoredBatch:
    """One reward call's batch judged once: what every VisionThink reward part reads.

    `scores`, `penalties` and `total` are None for every member of a dropped group (the judge failed on part of
    it); `formats` and `resized` are always filled."""

    slices: list[slice]
    scores: list[float | None]
    formats: list[float]
    penalties: list[float | None]
    resized: list[bool]
    total: list[float | None]
    """accuracy_weight * accuracy + format_weight * format - penalty (the summed VisionThink reward)."""

    def kept(self, values: Sequence[Any]) -> list[Any]:
        """`values` with None in the dropped groups (so that TRL leaves those rollouts out in every part)."""
        return [None if self.scores[i] is None else v for i, v in enumerate(values)]


class VisionThinkScorer:
    """Judges a reward call's batch ONCE and shares the verdicts between the VisionThink reward parts.

    TRL calls every reward function with the same `completions` list of one batch; the first part to ask starts the
    scoring (judge, dropped groups, group penalties, the `DropGuard`, the `log_metric` extras), the others await the
    same result. So the accuracy and the penalty see the same verdicts (an LLM judge is asked once), a dropped group
    is None in every part, and the group penalty still sees its whole group. A new `completions` object is a new
    batch. `log_components` also logs each part's mean by hand (for the one-callable `make_visionthink_reward`;
    with separate functions TRL logs `rewards/<name>/mean` itself)."""

    def __init__(self, judge: Any = None, num_generations: int | None = None, format_weight: float = 0.5,
                 accuracy_weight: float = 1.0, penalty: PenaltyConfig | Mapping[str, Any] | None = None,
                 question_key: str = "question", reference_key: str = "answer", tool_name: str = TOOL_NAME,
                 tool_arguments: Mapping[str, Any] | None = RESIZE_ARGUMENTS, log_prefix: str = "visionthink",
                 max_dropped_share: float | None = 0.5, dropped_window: int = 5,
                 log_components: bool = False) -> None:
        self.judge = build_judge(judge)
        self.guard = DropGuard(max_dropped_share, dropped_window, log_prefix)
        self.penalty = penalty if isinstance(penalty, PenaltyConfig) else PenaltyConfig(**dict(penalty or {}))
        self.num_generations, self.format_weight, self.accuracy_weight = num_generations, format_weight, accuracy_weight
        self.question_key, self.reference_key = question_key, reference_key
        self.tool_name, self.tool_arguments, self.log_prefix = tool_name, tool_arguments, log_prefix
        self.log_components = log_components
        self._batch: Any = None  # the `completions` object being scored (held, so its id is not reused)
        self._task: Any = None
        self._last_stats: dict[str, int] = {}

    async def score(self, prompts: Sequence[Any] | None, completions: Sequence[Any],
                    kwargs: Mapping[str, Any]) -> ScoredBatch:
        """The batch's `ScoredBatch`, computed at the first call for this `completions` object."""
        import asyncio

        if self._batch is not completions or self._task is None:
            self._batch = completions
            self._task = asyncio.ensure_future(self._score(prompts, completions, kwargs))
        return await self._task

    async def _score(self, prompts: Sequence[Any] | None, completions: Sequence[Any],
                     kwargs: Mapping[str, Any]) -> ScoredBatch:
        n = len(completions)
        slices = group_slices(n, self.num_generations, prompts)
        environments = kwargs.get("environments")
        scores = await judge_completions(self.judge, completions, prompts, kwargs, self.question_key,
                                         self.reference_key)
        scores = drop_failed_groups(scores, slices)
        formats = [float(check_format(c, self.tool_name, self.tool_arguments)) for c in completions]
        resized = rollout_resized(completions, environments, self.tool_name)
        penalties: list[float | None] = [None] * n
        total: list[float | None] = [None] * n
        zero_std = 0
        for s in slices:
            if s.stop <= s.start or scores[s][0] is None:
                continue
            correct = [v >= self.penalty.correct_threshold for v in scores[s]]  # type: ignore[operator]
            penalties[s] = resolution_penalties(correct, resized[s], self.penalty)
            for i in range(s.start, s.stop):
                total[i] = (self.accuracy_weight * scores[i] + self.format_weight * formats[i]  # type: ignore
                            - penalties[i])  # type: ignore[operator]
            zero_std += len(total[s]) > 1 and _std(total[s]) < 1e-4  # type: ignore[arg-type]
        batch = ScoredBatch(slices, scores, formats, penalties, resized, total)
        self._log(kwargs, batch, environments, zero_std)
        self.guard.observe(scores, slices, self.judge.stats())
        return batch

    def _log(self, kwargs: Mapping[str, Any], b: ScoredBatch, environments: Any, zero_std: int) -> None:
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        p = self.log_prefix
        if callable(log_metric):
            kept = len([s for s in b.slices if s.stop > s.start and b.scores[s.start] is not None])
            if self.log_components:
                log_metric(f"{p}/accuracy", _mean(b.scores))
                log_metric(f"{p}/format", _mean(b.formats))
                log_metric(f"{p}/penalty", _mean(b.penalties))
            log_metric(f"{p}/resize_rate", _mean([float(r) for r in b.resized]))
            kinds = kwargs.get("kind")
            if isinstance(kinds, (list, tuple)) and len(kinds) == len(b.resized):  # e.g. GlyphQA's fine / coarse
                for kind in sorted({k for k in kinds if isinstance(k, str)}):
                    log_metric(f"{p}/resize_rate_{kind}", _mean([float(r) for r, k in zip(b.resized, kinds)
                                                                 if k == kind]))
                sizes = kwargs.get("digit_size")  # GlyphQA's two digit sizes: the image-conditioned decision
                if isinstance(sizes, (list, tuple)) and len(sizes) == len(b.resized):
                    for size in sorted({s for s, k in zip(sizes, kinds) if k == "fine" and isinstance(s, str)}):
                        log_metric(f"{p}/resize_rate_{size}_digit", _mean([
                            float(r) for r, k, s in zip(b.resized, kinds, sizes) if k == "fine" and s == size]))
            log_metric(f"{p}/dropped_groups", 1.0 - kept / max(1, len(b.slices)))
            log_metric(f"{p}/zero_std_groups", zero_std / max(1, kept))
            tokens = [getattr(e, "visual_tokens", None) for e in environments or []]
            if any(isinstance(t, (int, float)) for t in tokens):
                log_metric(f"{p}/visual_tokens", _mean([float(t) for t in tokens if isinstance(t, (int, float))]))
            stats = self.judge.stats()
            for key, value in stats.items():
                log_metric(f"{p}/judge_{key}", float(value - self._last_stats.get(key, 0)))
            self._last_stats.update(stats)
        if callable(log_extra):
            log_extra(f"{p}_accuracy", list(b.scores))
            log_extra(f"{p}_format", list(b.formats))
            log_extra(f"{p}_resized", [float(r) for r in b.resized])


@dataclass
class RewardSet:
    """Reward functions and their weights, as `trl.GRPOTrainer(reward_funcs=set.funcs)` and
    `GRPOConfig(reward_weights=set.weights)` take them; TRL sums `weight * reward` and logs each function's mean as
    `rewards/<function name>/mean`."""

    funcs: list[RewardFn]
    weights: list[float]

    def __post_init__(self) -> None:
        if len(self.funcs) != len(self.weights):
            raise ValueError(f"{len(self.funcs)} reward functions but {len(self.weights)} weights")

    @property
    def names(self) -> list[str]:
        return [getattr(f, "__name__", type(f).__name__) for f in self.funcs]


VISIONTHINK_PARTS = ("accuracy", "format", "resolution_penalty")
"""The VisionThink reward's parts, in `grpo.rewards` order by default (weights accuracy_weight, format_weight, 1)."""


def make_visionthink_rewards(
    judge: Any = None,
    num_generations: int | None = None,
    format_weight: float = 0.5,
    accuracy_weight: float = 1.0,
    penalty: PenaltyConfig | Mapping[str, Any] | None = None,
    question_key: str = "question",
    reference_key: str = "answer",
    tool_name: str = TOOL_NAME,
    tool_arguments: Mapping[str, Any] | None = RESIZE_ARGUMENTS,
    log_prefix: str = "visionthink",
    max_dropped_share: float | None = 0.5,
    dropped_window: int = 5,
    parts: Sequence[str] = VISIONTHINK_PARTS,
    weights: Sequence[float] | None = None,
) -> RewardSet:
    """The VisionThink reward the TRL way: separate async functions `accuracy` (judge score), `format` (0/1) and
    `resolution_penalty` (-P, per group), weighted [accuracy_weight, format_weight, 1.0] by default, so that the
    weighted sum equals `make_visionthink_reward`'s summed reward exactly and TRL logs each part.

    They share one `VisionThinkScorer` (one judge call per batch, one `DropGuard`); a dropped group is None in every
    part, so TRL leaves it out as before. `parts` picks and orders them, `weights` overrides the defaults.

    >>> import asyncio
    >>> rewards = make_visionthink_rewards(judge="rule", num_generations=2)
    >>> rewards.names, rewards.weights
    (['accuracy', 'format', 'resolution_penalty'], [1.0, 0.5, 1.0])
    >>> batch = ["<think>clear</think><answer>4</answer>", "<think>hm</think><answer>5</answer>"]
    >>> [asyncio.run(f(prompts=["q", "q"], completions=batch, answer=["4", "4"])) for f in rewards.funcs]
    [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    """
    unknown = [p for p in parts if p not in VISIONTHINK_PARTS]
    if unknown:
        raise ValueError(f"unknown VisionThink reward part(s) {unknown}; known: {', '.join(VISIONTHINK_PARTS)}")
    scorer = VisionThinkScorer(judge, num_generations, format_weight, accuracy_weight, penalty, question_key,
                               reference_key, tool_name, tool_arguments, log_prefix, max_dropped_share,
                               dropped_window)

    async def accuracy(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any):
        return list((await scorer.score(prompts, completions, kwargs)).scores)

    async def format(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),  # noqa: A001
                     **kwargs: Any):
        batch = await scorer.score(prompts, completions, kwargs)
        return batch.kept(batch.formats)

    async def resolution_penalty(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
                                 **kwargs: Any):
        return [None if p is None else 0.0 - p for p in (await scorer.score(prompts, completions, kwargs)).penalties]

    made = {"accuracy": accuracy, "format": format, "resolution_penalty": resolution_penalty}
    default = {"accuracy": float(accuracy_weight), "format": float(format_weight), "resolution_penalty": 1.0}
    funcs = [_named(made[p], p, judge=scorer.judge, penalty=scorer.penalty, scorer=scorer) for p in parts]
    return RewardSet(funcs, [float(w) for w in weights] if weights is not None else [default[p] for p in parts])


@REWARDS.register("visionthink")
def make_visionthink_reward(
    judge: Any = None,
    num_generations: int | None = None,
    format_weight: float = 0.5,
    accuracy_weight: float = 1.0,
    penalty: PenaltyConfig | Mapping[str, Any] | None = None,
    question_key: str = "question",
    reference_key: str = "answer",
    tool_name: str = TOOL_NAME,
    tool_arguments: Mapping[str, Any] | None = RESIZE_ARGUMENTS,
    log_prefix: str = "visionthink",
    max_dropped_share: float | None = 0.5,
    dropped_window: int = 5,
) -> RewardFn:
    """accuracy_weight * accuracy + format_weight * format - penalty as ONE callable (one judge call per batch).

    Recipes use the separate parts (`make_visionthink_rewards`, `grpo.rewards`), whose weighted sum is this reward
    exactly; this form suits trainers that take one reward function. It logs through TRL's `log_metric` (when the
    trainer passes it): each component's mean, the resize rate (also per `kind` when the rows carry one:
    `resize_rate_fine`, `resize_rate_coarse`), visual tokens per sample (from `environments[i].visual_tokens`),
    dropped and zero-variance group shares and the judge's counters for this batch; and per-sample columns through
    `log_extra`. Raises `DroppedGroupsError` when more than `max_dropped_share` of the groups of the last
    `dropped_window` calls were dropped (judge failures); `max_dropped_share=None` never aborts.
    """
    scorer = VisionThinkScorer(judge, num_generations, format_weight, accuracy_weight, penalty, question_key,
                               reference_key, tool_name, tool_arguments, log_prefix, max_dropped_share,
                               dropped_window, log_components=True)

    async def visionthink(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any):
        scorer._batch = None  # one callable: every call is a new batch
        return list((await scorer.score(prompts, completions, kwargs)).total)

    return _named(visionthink, "visionthink", judge=scorer.judge, penalty=scorer.penalty)


def load_reward_object(spec: str, default_attr: str | None = None, where: str = "reward") -> Any:
    """The object a reward spec names: `package.module:name` (imported) or `path/to/file.py:name` (loaded from the
    file); without `:name`, `default_attr` of that module (e.g. a plugin's `build_reward_funcs`).

    >>> load_reward_object("adaptune.rl.rewards:make_format_reward").__name__
    'make_format_reward'
    """
    import importlib
    import importlib.util
    from pathlib import Path

    module_part, _, attr = str(spec).partition(":")
    attr = attr or default_attr or ""
    if not attr:
        raise ValueError(f"{where}: {spec!r} names a module but no function; write 'module:function'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise ValueError(f"{where}: {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"adaptune_reward_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"{where}: cannot load {path}")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise ValueError(f"{where}: cannot import {module_part!r} ({exc})") from None
    if not hasattr(module, attr):
        raise ValueError(f"{where}: {module_part} has no {attr!r}")
    return getattr(module, attr)
