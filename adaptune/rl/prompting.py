"""The resolution-request protocol shared by the warm-start SFT data, the GRPO environment and inference.

One definition of the tool (`resize_image(action)`), the system prompt and the answer format, so the embedded default
is warm-started on exactly the text that TRL renders during GRPO (TRL turns an environment's public, type-hinted,
docstring-carrying methods into tool schemas; `tool_schema()` renders this one the same way).

    messages = user_messages(question, low_res_image)          # system + user turn with the image
    tools = [tool_schema()]                                     # for apply_chat_template(tools=...)
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers.utils import get_json_schema

SYSTEM_PROMPT = (
    "You see a low-resolution version of an image. Think in <think></think>, then either answer in "
    "<answer></answer>, or call resize_image to see the full-resolution image first."
)
TOOL_NAME = "resize_image"
RESIZE_ACTION = "resize"
# The texts the embedded default was warm-started with; inference prefills and scripts turns with the same ones.
DIRECT_THOUGHT = "I can answer from this image."
RESIZE_THOUGHT = "The details are too small, I need the full-resolution image."
AFTER_RESIZE_THOUGHT = "Now I can see the full-resolution image."
TOOL_RESULT_TEXT = "Here is the full-resolution image."


class ResizeTool:
    """The tool surface. `adaptune.rl.env.ResolutionEnv` subclasses this and implements `_full_image_blocks`."""

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
    return '<tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}}\n</tool_call>'


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
