"""GRPO step time: adaptune's GRPO path / plain TRL running the same environment and reward logic, written minimally.

Both sides train the same random-weight tiny Qwen3-VL (seed 0) with the same `GRPOConfig` (the tiny recipe's, as
adaptune converts it), the same rows, the same LoRA config and the same scripted generation (`sequence_bias` that puts
the random model on the protocol, so both sample the same kind of rollouts: a tool call or a direct answer, then an
answer). What differs is only the code around TRL:
- adaptune: `adaptune.rl.trainer.build_grpo_trainer` (its `ResolutionEnv`: image validation, token accounting, shared
  counters; its reward stack: parsers, the rule judge, the group penalty, dropped-group guard, logging);
- plain TRL: `GRPOTrainer(environment_factory=PlainEnv, reward_funcs=[accuracy, format, penalty])`, defined below in
  about 60 lines (a `resize_image` tool that returns the full image once; exact-match accuracy, a tag check, the
  paper's group penalty).

Each repeat builds both trainers fresh and trains `--steps` steps, alternating which goes first; a step is timed from
`on_step_begin` to `on_step_end` (generation, tool turn, rewards, loss, optimizer), the first step of each run left
out (lazy initialisation). Reported: mean step time of each side with its spread, the per-repeat ratio's mean, min-max
and 95% interval, and whether that interval is narrow enough to resolve 5%. Target: ratio <= 1.05.

    python benchmarks/bench_grpo_overhead.py [--steps 8 --repeats 16]

Measured (2026-11-29, 2 shared CPU cores, busy with other jobs; 16 repeats x 8 steps, about 3 minutes): adaptune
0.572 s/step, plain TRL 0.577 s/step, ratio 0.989, 95% interval +-0.032 (per repeat 0.88-1.16).
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "qwen3_vl" / "glyphqa" / "visionthink_grpo_tiny.yaml"
RESULT_TEXT = "Here is the full-resolution image."  # the tool turn's text, as adaptune's environment returns it
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


# ------------------------------------------------------------------------ plain TRL: environment and rewards, minimal


class PlainEnv:
    """One rollout: the low image is in the prompt; `resize_image` returns the full one, once."""

    def reset(self, **row: Any) -> None:
        self.full, self.resized = row["full_image"], False

    def resize_image(self, action: str) -> list[dict[str, Any]] | str:
        """
        Get the full-resolution version of the image, for when details are too small to see.

        Args:
            action: Must be "resize".
        """
        if action != "resize" or self.resized:
            return "Error: answer the question now."
        self.resized = True
        return [{"type": "image", "image": self.full}, {"type": "text", "text": RESULT_TEXT}]


def _text(completion: Any) -> str:
    """The last assistant turn's text (TRL parses `<think>` into `reasoning_content`; put it back)."""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role") == "assistant":
            content = message.get("content") or ""
            text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
            reasoning = message.get("reasoning_content")
            return f"<think>{reasoning}</think>{text}" if reasoning else text
    return ""


def _answer(completion: Any) -> str | None:
    found = re.findall(r"<answer>(.*?)</answer>", _text(completion), re.S)
    return found[-1].strip().lower() if found else None


def accuracy(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    return [float(_answer(c) == str(a).strip().lower()) for c, a in zip(completions, answer)]


def formatted(completions: list[Any], **kwargs: Any) -> list[float]:
    return [float(bool(re.search(r"<think>.*?</think>", _text(c), re.S)) and _answer(c) is not None)
            for c in completions]


def make_penalty(num_generations: int, theta: float = 0.2, weight: float = 0.1):
    def resolution_penalty(completions: list[Any], answer: list[str], environments: list[PlainEnv], **kwargs: Any
                           ) -> list[float]:
        correct = accuracy(completions, answer)
        out = []
        for start in range(0, len(completions), num_generations):
            group = range(start, start + num_generations)
            direct = sum(correct[i] for i in group if not environments[i].resized)
            high = sum(correct[i] for i in group if environments[i].resized)
            ratio = direct / (direct + high) if direct + high else 0.0
            out += [-weight * float(environments[i].resized == (ratio >= theta)) for i in group]
        return out

    return resolution_penalty


# ------------------------------------------------------------------------------------------------------- timing


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.lengths: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "completions/mean_length" in logs:
            self.lengths.append(float(logs["completions/mean_length"]))


def scripted_generation(processor: Any, answer: str = "3", big: float = 40.0, choice: float = 30.0
                        ) -> tuple[dict[str, Any], int]:
    """`sequence_bias` that puts a random-weight model on the protocol (tool call or tagged answer, then an answer);
    the choice between the two is left to the model's own logits."""
    from adaptune.budget.protocol import tool_call_text

    tok = processor.tokenizer

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    header = enc("<|im_start|>assistant\n")
    after_tool = enc("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    tool = enc("<think>x</think>\n" + tool_call_text()) + [im_end]
    direct = enc(f"<think>y</think><answer>{answer}</answer>") + [im_end]
    final = enc(f"<think>z</think><answer>{answer}</answer>") + [im_end]
    bias = [[header + enc("<think>"), big], [header + tool[:2], choice], [header + direct[:2], choice],
            [after_tool + final[:2], 3 * big]]
    for seq in (tool, direct, final):
        bias += [[seq[: k + 1], big] for k in range(2, len(seq))]
    return {"sequence_bias": bias}, max(len(tool), len(direct), len(final))


def one_run(kind: str, steps: int, out: Path) -> dict[str, float]:
    from trl import GRPOTrainer

    from adaptune.config import load_recipe
    from adaptune.models import build_tiny
    from adaptune.rl.trainer import build_grpo_trainer

    recipe = load_recipe(RECIPE, [f"training.max_steps={steps}", "training.save_steps=1000", "grpo.eval.enabled=false",
                                  f"output.dir={out}"])
    kwargs, longest = scripted_generation(build_tiny("qwen3_vl")[1])
    recipe.grpo["trainer"]["generation_kwargs"] = kwargs
    recipe.grpo["env"]["turn_tokens"] = longest
    timer = StepTimer()
    trainer, parts = build_grpo_trainer(recipe, out / "checkpoints", callbacks=[timer])
    if kind == "plain":
        model, processor = build_tiny("qwen3_vl", seed=0)
        peft_config = trainer.model.peft_config["default"] if hasattr(trainer.model, "peft_config") else None
        penalty = recipe.grpo["reward"]["penalty"]
        funcs = [accuracy, formatted, make_penalty(parts.config.num_generations, penalty["theta"], penalty["weight"])]
        config = copy.copy(parts.config)  # same arguments; only the weights of the three plain rewards
        config.reward_weights = [1.0, 0.5, 1.0]
        del trainer
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=parts.train_rows,
                              processing_class=processor, peft_config=peft_config, environment_factory=PlainEnv,
                              callbacks=[timer])
    trainer.train()
    timed = timer.times[1:] or timer.times
    return {"step_s": statistics.mean(timed), "completion_len": statistics.mean(timer.lengths or [0.0])}


def interval(values: list[float]) -> float:
    """Half-width of the 95% interval of the mean (Student t)."""
    if len(values) < 2:
        return math.inf
    return T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps per run (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=12, help="16 resolved 5%% on a busy 2-core machine")
    parser.add_argument("--no-save", action="store_true", help="print only (smoke tests)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"adaptune": [], "plain": []}
    lengths: dict[str, list[float]] = {"adaptune": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for kind in ("adaptune", "plain") if rep % 2 == 0 else ("plain", "adaptune"):
                result = one_run(kind, args.steps, Path(tmp) / f"{kind}{rep}")
                times[kind].append(result["step_s"])
                lengths[kind].append(result["completion_len"])
    ratios = [a / p for a, p in zip(times["adaptune"], times["plain"])]
    mean, half = statistics.mean(ratios), interval(ratios)
    result = {"steps": args.steps, "repeats": args.repeats, "adaptune_step_s": times["adaptune"],
              "plain_trl_step_s": times["plain"], "ratios": ratios, "ratio_mean": mean, "ratio_ci95": half,
              "resolves_5_percent": half < 0.05, "completion_len": {k: statistics.mean(v) for k, v in lengths.items()}}
    print(f"\n## GRPO step: adaptune / plain TRL, same environment and reward logic ({args.repeats} repeats x "
          f"{args.steps} steps, first step of each run not timed; machine shared and noisy: read the interval)")
    for kind in ("adaptune", "plain"):
        values = times[kind]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{kind:<9} {statistics.mean(values):.3f} s/step  (sd {spread:.3f}, min {min(values):.3f}, "
              f"max {max(values):.3f}); mean completion length {result['completion_len'][kind]:.1f} tokens")
    print(f"ratio adaptune / plain TRL: mean {mean:.3f}, per repeat [{min(ratios):.3f}, {max(ratios):.3f}], "
          f"95% interval +-{half:.3f} (target <= 1.05; resolves 5%: {'yes' if half < 0.05 else 'no, more repeats'})")
    if not args.no_save:
        save("grpo_overhead", result)
    print(machine())


if __name__ == "__main__":
    main()
