"""Conversations for the embedded default: plain multi-question VQA and the resolution-request warm start.

Two formats, both rendered as the trl-shipped `qwen3_vl` chat template renders them:

- plain VQA (curriculum stages 2-3, mixed into stage 4): one image, ALL its questions in shuffled order, each
  answered as `<answer>X</answer>`, then a caption turn ("Describe the image."). No system prompt: short sequences.
- protocol (stage 4, the warm start for GRPO): system prompt + tool schema from `adaptune.budget.protocol`, the
  HALF-resolution image and one question. With probability `resize_rate`, drawn independently of the question's kind
  (the RL stage must learn WHEN to resize; the warm start must not already know), the assistant calls
  `resize_image`, the tool turn returns the FULL image, and the assistant answers; otherwise it answers directly.

    from adaptune.default.sft import protocol_messages, render, plan_protocol
    plan = plan_protocol(rows, n=1000, seed=0)                 # [(row_index, question_index, resize), ...]
    text = render(processor, protocol_messages(q, a, resize=True))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adaptune.budget.protocol import (
    AFTER_RESIZE_THOUGHT,
    DIRECT_THOUGHT,
    RESIZE_THOUGHT,
    direct_answer,
    render,
    tool_call,
    tool_call_message,
    tool_result_message,
    turn_format,
    user_messages,
)

CAPTION_REQUEST = "Describe the image."
IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"


def protocol_messages(question: str, answer: str | None = None, resize: bool = False) -> list[dict[str, Any]]:
    """System + user(half image, question), then either a direct answer or tool call -> tool(full image) -> answer.

    With `answer=None` only the prompt (and, when `resize`, the tool-call turn and tool turn) is returned, ready for
    `add_generation_prompt=True`.
    """
    messages = user_messages(question)
    if resize:
        messages.append(tool_call_message(RESIZE_THOUGHT))
        messages.append(tool_result_message())
        if answer is not None:
            messages.append({"role": "assistant", "content": direct_answer(AFTER_RESIZE_THOUGHT, answer)})
    elif answer is not None:
        messages.append({"role": "assistant", "content": direct_answer(DIRECT_THOUGHT, answer)})
    return messages


def plain_turns(questions: list[str], answers: list[str], caption: str | None, order: list[int]) -> list[tuple[str, str]]:
    """(user, assistant) turns: the questions in `order` (answers in <answer> tags), then the caption turn if any."""
    turns = [(questions[j], f"<answer>{answers[j]}</answer>") for j in order]
    return turns + ([(CAPTION_REQUEST, caption)] if caption is not None else [])


def plain_vqa_text(questions: list[str], answers: list[str], caption: str | None, order: list[int]) -> str:
    """One image (in the first user turn), its questions in `order`, then the caption turn (unless None)."""
    return "".join(f"<|im_start|>user\n{IMAGE_SLOT if k == 0 else ''}{user}<|im_end|>\n"
                   f"<|im_start|>assistant\n{reply}<|im_end|>\n"
                   for k, (user, reply) in enumerate(plain_turns(questions, answers, caption, order)))


def plain_vqa_messages(questions: list[str], answers: list[str], caption: str | None, order: list[int]) -> list[dict]:
    """The same conversation as messages (used to check `plain_vqa_text` against the chat template)."""
    messages: list[dict[str, Any]] = []
    for k, (user, reply) in enumerate(plain_turns(questions, answers, caption, order)):
        content = ([{"type": "image"}] if k == 0 else []) + [{"type": "text", "text": user}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": reply}]
    return messages


def plan_protocol(rows: list[dict[str, Any]], n: int, seed: int, fine_share: float = 0.4,
                  resize_rate: float = 0.5) -> list[tuple[int, int, bool]]:
    """n warm-start conversations: (row, question index, resize?). The kind mix is `fine_share` fine; the resize
    flag is an independent coin flip, so the resize rate is the same for both kinds (up to sampling noise)."""
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(n):
        r = int(rng.integers(len(rows)))
        kinds = rows[r]["kinds"]
        want = "fine" if rng.random() < fine_share else "coarse"
        options = [j for j, k in enumerate(kinds) if k == want] or list(range(len(kinds)))
        plan.append((r, int(options[int(rng.integers(len(options)))]), bool(rng.random() < resize_rate)))
    return plan


def well_formed(text: str) -> str | None:
    """The GRPO format rule per turn: "tool", "answer" or None (`adaptune.budget.protocol.turn_format`)."""
    return turn_format(text)


__all__ = ["CAPTION_REQUEST", "IMAGE_SLOT", "plain_turns", "plain_vqa_messages", "plain_vqa_text", "plan_protocol",
           "protocol_messages", "render", "tool_call", "tool_result_message", "well_formed"]
