"""GRPO step time with adaptune's environment + VisionThink reward / plain TRL GRPO with a trivial reward.

Same tiny Qwen3-VL, same GRPOConfig, same rows, same rendered prompt (the plain trainer gets a standalone tool with
the same schema, so the tool boilerplate in the prompt is identical); only adaptune's environment (image accounting,
resize handling) and reward stack (answer parsing, rule judge, group penalty, logging) differ. Steps after the
first are timed; each repeat builds both trainers fresh and alternates which runs first.

    python benchmarks/bench_grpo_overhead.py [--steps 4 --repeats 3]      (target: ratio <= 1.05)
"""

from __future__ import annotations

import argparse
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
from adaptune.rl.glue import build_grpo_trainer  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "qwen3_vl" / "glyphqa" / "visionthink_grpo_tiny.yaml"


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t0)


def resize_image(action: str) -> str:
    """
    Get the full-resolution version of the image, for when details are too small to see.

    Args:
        action: Must be "resize".
    """
    return "Here is the full-resolution image."


def trivial_reward(completions, **kwargs):
    return [float(len(str(c)) % 2) for c in completions]  # varies, so groups have a gradient


def one_run(kind: str, steps: int, out: Path) -> float:
    from trl import GRPOTrainer

    recipe = load_recipe(RECIPE, [f"training.max_steps={steps}", "training.save_steps=1000", "grpo.eval.enabled=false",
                                  f"output.dir={out}"])
    timer = StepTimer()
    trainer, parts = build_grpo_trainer(recipe, out / "checkpoints", callbacks=[timer])
    if kind == "plain":
        from adaptune.models import build_tiny

        model, _ = build_tiny("qwen3_vl", seed=0)
        peft_config = trainer.model.peft_config["default"] if hasattr(trainer.model, "peft_config") else None
        trainer = GRPOTrainer(model=model, reward_funcs=[trivial_reward], args=parts.config,
                              train_dataset=parts.train_rows, processing_class=parts.loaded.processor,
                              peft_config=peft_config, tools=[resize_image], callbacks=[timer])
    trainer.train()
    return statistics.median(timer.times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios, ours, plain = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            order = ("adaptune", "plain") if rep % 2 == 0 else ("plain", "adaptune")
            t = {k: one_run(k, args.steps, Path(tmp) / f"{k}{rep}") for k in order}
            ours.append(t["adaptune"])
            plain.append(t["plain"])
            ratios.append(t["adaptune"] / t["plain"])
    result = {"adaptune_step_s": statistics.median(ours), "plain_trl_step_s": statistics.median(plain),
              "ratio": statistics.median(ratios), "ratio_spread": [min(ratios), max(ratios)],
              "steps": args.steps, "repeats": args.repeats}
    print(f"\n## GRPO step: adaptune env + rewards / plain TRL + trivial reward ({machine()['platform']})")
    print(f"adaptune {result['adaptune_step_s']:.3f} s/step, plain TRL {result['plain_trl_step_s']:.3f} s/step, "
          f"ratio {result['ratio']:.3f} [{min(ratios):.3f}, {max(ratios):.3f}] (target <= 1.05)")
    save("grpo_overhead", result)


if __name__ == "__main__":
    main()
