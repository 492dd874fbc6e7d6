"""The resolution-request protocol: the one definition of the `resize_image` tool, its prompts, rendering and parsing.

Used by the warm-start SFT data of the embedded default, the GRPO environment (TRL renders exactly this text), the
two-turn inference loop (`adaptune.budget.two_turn`) and every evaluation. Nothing else in the package spells the tool's
name, its argument, the system prompt or the tool-result text.

TRL turns an environment's public, type-hinted, docstring-carrying methods into tool schemas; `tool_schema()` renders
`ResizeTool.resize_image` the same way, so `apply_chat_template(tools=[tool_schema()])` here and TRL's rendering agree.

    messages = user_messages(question)                     # system + user turn with an image slot
    text = render(processor, messages, generation_prompt=True)
    is_resize_call(model_output)                           # exactly one well-formed resize_image(action="resize")
    turn_format(model_output)                              # "tool" | "answer" | None (VisionThink's format rule)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from PIL import Image
from transformers.utils import get_json_schema

from .answers import assistant_turns, is_direct_answer_turn, is_tool_turn

SYSTEM_PROMPT = (
    "You see a low-resolution version of an image. Think in <think></think>, then either answer in "
    "<answer></answer>, or call resize_image to see the full-resolution image first."
)
TOOL_NAME = "resize_image"
RESIZE_ACTION = "resize"
RESIZE_ARGUMENTS: Mapping[str, Any] = MappingProxyType({"action": RESIZE_ACTION})
# The texts the embedded default was warm-started with; inference prefills and scripts turns with the same ones.
DIRECT_THOUGHT = "I can answer from this image."
RESIZE_THOUGHT = "The details are too small, I need the full-resolution image."
AFTER_RESIZE_THOUGHT = "Now I can see the full-resolution image."
TOOL_RESULT_TEXT = "Here is the full-resolution image."


class ResizeTool:
    """The tool surface. `adaptune.rl.env.ResolutionEnv` subclasses this and implements `_full_image_blocks`.

    The method name and docstring ARE the protocol (TRL builds the schema from them): change them only together
    with `TOOL_NAME` and the warm-start data of the embedded default.
    """

    def resize_image(self, action: str) -> list[dict[str, Any]]:
        """
        Get the full-resolution version of the image, for when details are too small to see.

        Args:
            action: Must be "resize".
        """
        return self._full_image_blocks(action)

    def _full_image_blocks(self, action: str) -> list[dict[str, Any]]:  # pragma: no cover - overridden
        raise NotImplementedError


def tool_schema() -> dict[str, Any]:
    """The JSON schema TRL and `apply_chat_template(tools=...)` render for the resize tool."""
    return get_json_schema(ResizeTool.resize_image)


def tool_call_text() -> str:
    """The Qwen-family tool call the model emits (as rendered by the trl-shipped qwen3_vl template)."""
    return (f'<tool_call>\n{{"name": "{TOOL_NAME}", "arguments": {{"action": "{RESIZE_ACTION}"}}}}\n'
            '</tool_call>')


def user_messages(question: str, image: Image.Image | None = None) -> list[dict[str, Any]]:
    """System prompt + a user turn holding the (low-resolution) image and the question."""
    content: list[dict[str, Any]] = [{"type": "image", "image": image} if image is not None else {"type": "image"}]
    content.append({"type": "text", "text": question})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def direct_prefix(thought: str = DIRECT_THOUGHT) -> str:
    """Prefill that forces a direct answer (fixed-resolution baselines): the model only writes the answer."""
    return f"<think>{thought}</think><answer>"


def direct_answer(thought: str, answer: str) -> str:
    return f"<think>{thought}</think><answer>{answer}</answer>"


def tool_turn(thought: str) -> str:
    return f"<think>{thought}</think>\n{tool_call_text()}"


def tool_call() -> dict[str, Any]:
    """The assistant-side call in the structured message form TRL builds from a parsed completion."""
    return {"type": "function", "function": {"name": TOOL_NAME, "arguments": dict(RESIZE_ARGUMENTS)}}


def tool_call_message(think: str | None = RESIZE_THOUGHT, body: str = "") -> dict[str, Any]:
    """The assistant turn that requested the full image (its reasoning, then the call), ready for the template."""
    content = f"<think>{think}</think>" if think is not None else body
    return {"role": "assistant", "content": content, "tool_calls": [tool_call()]}


def tool_result_message() -> dict[str, Any]:
    """The tool turn: an image slot (pass the FULL image to the processor) and `TOOL_RESULT_TEXT`."""
    return {"role": "tool", "name": TOOL_NAME,
            "content": [{"type": "image"}, {"type": "text", "text": TOOL_RESULT_TEXT}]}


def render(processor: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as TRL renders it during GRPO (the tool schema in the system turn)."""
    return processor.apply_chat_template(messages, tools=[tool_schema()], tokenize=False,
                                         add_generation_prompt=generation_prompt)


def is_resize_call(text_or_turn: Any) -> bool:
    """True when the (last) assistant turn holds exactly one well-formed `resize_image(action="resize")` call.

    >>> is_resize_call(tool_turn("blurry"))
    True
    >>> is_resize_call('<tool_call>{"name": "resize_image", "arguments": {"action": "zoom"}}</tool_call>')
    False
    """
    turns = assistant_turns(text_or_turn)
    if not turns:
        return False
    calls = turns[-1].tool_calls
    return len(calls) == 1 and calls[0].name == TOOL_NAME and calls[0].arguments == dict(RESIZE_ARGUMENTS)


def turn_format(text: Any) -> str | None:
    """VisionThink's per-turn format rule: "tool" for `<think>..</think>` + one resize call and nothing else,
    "answer" for `<think>..</think><answer>..</answer>`, None for anything else.

    >>> turn_format(direct_answer("easy", "7")), turn_format(tool_turn("small")), turn_format("<answer>7</answer>")
    ('answer', 'tool', None)
    """
    turns = assistant_turns(text)
    if len(turns) != 1:
        return None
    if is_tool_turn(turns[0], TOOL_NAME, RESIZE_ARGUMENTS):
        return "tool"
    return "answer" if is_direct_answer_turn(turns[0]) else None


def check_format(
    completion: Any,
    tool_name: str = TOOL_NAME,
    tool_arguments: Mapping[str, Any] | None = RESIZE_ARGUMENTS,
    max_tool_calls: int = 1,
) -> bool:
    """VisionThink's all-or-nothing format: zero or more tool turns, then one direct-answer turn.

    >>> check_format("<think>easy</think>\\n<answer>cat</answer>")
    True
    >>> check_format("<answer>cat</answer>")
    False
    """
    turns = assistant_turns(completion)
    if not turns or not is_direct_answer_turn(turns[-1]):
        return False
    if sum(len(t.tool_calls) for t in turns) > max_tool_calls:
        return False
    return all(is_tool_turn(t, tool_name, tool_arguments) for t in turns[:-1])
