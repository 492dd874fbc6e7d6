"""GRPO step time with adaptune's environment + VisionThink reward / plain TRL GRPO with a trivial reward.

Same tiny Qwen3-VL, same GRPOConfig, same rows, same rendered prompt (the plain trainer gets a standalone tool with
the same schema, so the tool boilerplate in the prompt is identical); only adaptune's environment (image accounting,
resize handling) and reward stack (answer parsing, rule judge, group penalty, logging) differ. Steps after the
first are timed; each repeat builds both trainers fresh and alternates which runs first.

    python benchmarks/bench_grpo_overhead.py [--steps 4 --repeats 3]      (target: ratio <= 1.05)

Besides the end-to-end ratio it reports (a) the time spent inside adaptune's reward and environment code as a share
of the step (wrapped timers, same run), and (b) plain TRL with the trivial reward made async / sync, which isolates
TRL's async-reward machinery (adaptune's reward is async because judges may be remote).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save  # noqa: E402

from adaptune.config import load_recipe  # noqa: E402
from adaptune.rl.trainer import build_grpo_trainer  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "qwen3_vl" / "glyphqa" / "visionthink_grpo_tiny.yaml"


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.own: list[float] = []  # seconds inside adaptune's reward and environment code, per step
        self.lengths: list[float] = []  # mean completion length per step (TRL's log)
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()
        OWN_TIME[0] = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t0)
        self.own.append(OWN_TIME[0])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "completions/mean_length" in logs:
            self.lengths.append(float(logs["completions/mean_length"]))


OWN_TIME = [0.0]


def _timed_sync(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            OWN_TIME[0] += time.perf_counter() - t0
    return wrapper


def _timed_async(fn):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            OWN_TIME[0] += time.perf_counter() - t0
    return wrapper


def instrument() -> None:
    """Time adaptune's own per-step code: the reward functions and the environment's reset / resize_image."""
    from adaptune.rl import env
    from adaptune.rl import trainer as rl_trainer

    for name in ("reset", "resize_image"):
        method = getattr(env.ResolutionEnv, name)
        if not hasattr(method, "__wrapped__"):
            setattr(env.ResolutionEnv, name, _timed_sync(method))
    build = rl_trainer.build_reward_funcs
    if not hasattr(build, "__wrapped__"):
        @functools.wraps(build)
        def wrapped_build(*args, **kwargs):
            return [_timed_async(f) if inspect.iscoroutinefunction(f) else _timed_sync(f)
                    for f in build(*args, **kwargs)]
        rl_trainer.build_reward_funcs = wrapped_build


def resize_image(action: str) -> str:
    """
    Get the full-resolution version of the image, for when details are too small to see.

    Args:
        action: Must be "resize".
    """
    return "Here is the full-resolution image."


def trivial_reward(completions, **kwargs):
    return [float(len(str(c)) % 2) for c in completions]  # varies, so groups have a gradient


async def async_trivial_reward(completions, **kwargs):
    return trivial_reward(completions)


def one_run(kind: str, steps: int, out: Path) -> dict[str, float]:
    from trl import GRPOTrainer

    recipe = load_recipe(RECIPE, [f"training.max_steps={steps}", "training.save_steps=1000", "grpo.eval.enabled=false",
                                  f"output.dir={out}"])
    timer = StepTimer()
    trainer, parts = build_grpo_trainer(recipe, out / "checkpoints", callbacks=[timer])
    if kind in ("plain", "plain_async"):
        from adaptune.models import build_tiny

        model, _ = build_tiny("qwen3_vl", seed=0)
        peft_config = trainer.model.peft_config["default"] if hasattr(trainer.model, "peft_config") else None
        reward = trivial_reward if kind == "plain" else async_trivial_reward
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=parts.config,
                              train_dataset=parts.train_rows, processing_class=parts.loaded.processor,
                              peft_config=peft_config, tools=[resize_image], callbacks=[timer])
    trainer.train()
    return {"step_s": statistics.median(timer.times[1:]), "own_s": statistics.median(timer.own[1:]),
            "completion_len": statistics.mean(timer.lengths[1:] or timer.lengths or [0.0])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    instrument()
    ratios, ours, plain, own_shares, async_ratios = [], [], [], [], []
    lens: dict[str, list[float]] = {"adaptune": [], "plain": [], "plain_async": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            order = ("adaptune", "plain", "plain_async") if rep % 2 == 0 else ("plain_async", "plain", "adaptune")
            t = {k: one_run(k, args.steps, Path(tmp) / f"{k}{rep}") for k in order}
            ours.append(t["adaptune"]["step_s"])
            plain.append(t["plain"]["step_s"])
            ratios.append(t["adaptune"]["step_s"] / t["plain"]["step_s"])
            own_shares.append(t["adaptune"]["own_s"] / t["adaptune"]["step_s"])
            async_ratios.append(t["plain_async"]["step_s"] / t["plain"]["step_s"])
            for k in lens:
                lens[k].append(t[k]["completion_len"])
    own = statistics.median(own_shares)
    result = {"adaptune_step_s": statistics.median(ours), "plain_trl_step_s": statistics.median(plain),
              "ratio": statistics.median(ratios), "ratio_spread": [min(ratios), max(ratios)],
              "plain_async_ratio": statistics.median(async_ratios), "own_code_share": own, "own_code_ratio": 1 / (1 - own),
              "completion_len": {k: statistics.mean(v) for k, v in lens.items()},
              "steps": args.steps, "repeats": args.repeats}
    print(f"\n## GRPO step: adaptune env + rewards / plain TRL + trivial reward ({machine()['platform']})")
    print(f"adaptune {result['adaptune_step_s']:.3f} s/step, plain TRL {result['plain_trl_step_s']:.3f} s/step, "
          f"ratio {result['ratio']:.3f} [{min(ratios):.3f}, {max(ratios):.3f}] (target <= 1.05)")
    print(f"plain TRL with the same trivial reward as an async function / sync: "
          f"{result['plain_async_ratio']:.3f} [{min(async_ratios):.3f}, {max(async_ratios):.3f}] "
          f"(TRL runs async rewards on a daemon event loop; adaptune's judges are async)")
    print(f"time inside adaptune's reward + environment code: {100 * own:.1f}% of the step -> own-code ratio "
          f"{result['own_code_ratio']:.3f} [{1 / (1 - min(own_shares)):.3f}, {1 / (1 - max(own_shares)):.3f}]")
    print(f"mean completion length (tokens): adaptune {result['completion_len']['adaptune']:.1f}, plain "
          f"{result['completion_len']['plain']:.1f} (if equal, the gap left after adaptune's own code is not longer "
          f"rollouts but TRL's environment_factory path vs tools=, which this benchmark does not time separately)")
    save("grpo_overhead", result)


if __name__ == "__main__":
    main()
