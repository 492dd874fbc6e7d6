"""Parse model completions: assistant turns, `<think>`/`<answer>` tags, `\\boxed{}` and Qwen-style tool calls.

Why: rewards must read the same completion the same way whether TRL hands over a plain string or a conversation
(a list of message dicts in which TRL's response parser may already have split `<think>` into `reasoning_content`
and `<tool_call>` blocks into `tool_calls`). Every parser here is total: malformed, truncated or unclosed input gives
`None` / an empty list, never an exception.

    >>> extract_answer("<think>2+2</think><answer>4</answer>")
    '4'
    >>> extract_answer("<think>x</think><answer>\\\\boxed{B}</answer>")
    'B'
    >>> extract_answer("<think>x</think><answer>4")  # unclosed: no answer
    >>> [t.tool_calls[0].name for t in assistant_turns(
    ...     '<think>blurry</think><tool_call>{"name": "resize_image", "arguments": {"action": "resize"}}</tool_call>')]
    ['resize_image']
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_THINK_HEAD = re.compile(r"^\s*<think>([\s\S]*?)</think>")
_ANSWER = re.compile(r"<answer>([\s\S]*?)</answer>")
_TOOL_BLOCK = re.compile(r"<tool_call>([\s\S]*?)</tool_call>")
_TOOL_TAIL = re.compile(r"^(?:\s*<tool_call>[\s\S]*?</tool_call>)+\s*$")
_TAGS = ("<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>")


@dataclass(frozen=True)
class ToolCall:
    """One tool call; `name` is None when the call's JSON could not be parsed."""

    name: str | None
    arguments: dict[str, Any] | None


@dataclass
class AssistantTurn:
    """One assistant message, split into its parts.

    `think` is the reasoning (None when the turn has no leading `<think>..</think>`), `body` the text after it with
    any tool-call blocks removed, `tool_calls` every call (structured or written inline), and `calls_at_end` is False
    when inline `<tool_call>` blocks are followed by other text.
    """

    think: str | None
    body: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    calls_at_end: bool = True


def _content_text(content: Any) -> str:
    """Text of a message `content`: a string, or a list of parts such as `{"type": "text", "text": ...}`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text"]
        return "".join(t for t in texts if isinstance(t, str))
    return str(content)


def _tool_call_from_json(raw: str) -> ToolCall:
    try:
        obj = json.loads(raw.strip())
    except (ValueError, TypeError):
        return ToolCall(None, None)
    return _tool_call_from_obj(obj)


def _tool_call_from_obj(obj: Any) -> ToolCall:
    if not isinstance(obj, Mapping):
        return ToolCall(None, None)
    if isinstance(obj.get("function"), Mapping):  # OpenAI / TRL shape: {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = None
    return ToolCall(name if isinstance(name, str) else None, args if isinstance(args, dict) else None)


def parse_turn(content: Any, reasoning: str | None = None, tool_calls: Sequence[Any] | None = None) -> AssistantTurn:
    """Split one assistant message into think / body / tool calls.

    >>> parse_turn("<think>a</think> <answer>b</answer>").body
    '<answer>b</answer>'
    """
    text = _content_text(content)
    think: str | None = None
    if reasoning and reasoning.strip():
        think, rest = reasoning, text
    else:
        match = _THINK_HEAD.match(text)
        think, rest = (match.group(1), text[match.end() :]) if match else (None, text)
    calls = [_tool_call_from_obj(c) for c in (tool_calls or [])]
    blocks = _TOOL_BLOCK.findall(rest)
    calls += [_tool_call_from_json(b) for b in blocks]
    calls_at_end = True
    if blocks:
        first = rest.find("<tool_call>")
        calls_at_end = bool(_TOOL_TAIL.match(rest[first:]))
        rest = _TOOL_BLOCK.sub("", rest)
    return AssistantTurn(think=think, body=rest.strip(), tool_calls=calls, calls_at_end=calls_at_end)


def assistant_turns(completion: Any) -> list[AssistantTurn]:
    """The assistant turns of a completion: a plain string (one turn) or a list of message dicts.

    Tool and user messages are skipped. TRL's parsed fields (`reasoning_content`, `tool_calls`) are honoured.
    """
    if isinstance(completion, str):
        return [parse_turn(completion)]
    if isinstance(completion, Mapping):
        completion = [completion]
    turns = []
    for message in completion or []:
        if isinstance(message, Mapping) and message.get("role", "assistant") == "assistant":
            reasoning = message.get("reasoning_content")
            turns.append(
                parse_turn(
                    message.get("content"),
                    reasoning if isinstance(reasoning, str) else None,
                    message.get("tool_calls"),
                )
            )
    return turns


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (nested braces allowed); None when absent or unbalanced.

    >>> extract_boxed("so \\\\boxed{\\\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def answer_from_turn(turn: AssistantTurn) -> str | None:
    """Text of the last closed `<answer>` in a turn's body; a `\\boxed{}` inside it wins; blank -> None."""
    found = _ANSWER.findall(turn.body)
    if not found:
        return None
    answer = found[-1].strip()
    boxed = extract_boxed(answer)
    answer = boxed if boxed is not None else answer
    return answer or None


def extract_answer(completion: Any) -> str | None:
    """The answer given in the FINAL assistant turn of `completion`, or None (missing, unclosed or empty)."""
    turns = assistant_turns(completion)
    return answer_from_turn(turns[-1]) if turns else None


def count_tool_calls(completion: Any, name: str | None = None) -> int:
    """Number of tool calls over all assistant turns (only those called `name` when given)."""
    return sum(1 for t in assistant_turns(completion) for c in t.tool_calls if name is None or c.name == name)


def _clean(text: str) -> bool:
    return not any(tag in text for tag in _TAGS)


def is_direct_answer_turn(turn: AssistantTurn) -> bool:
    """`<think>..</think><answer>..</answer>` and nothing else (non-empty reasoning and answer, no tool call)."""
    if turn.think is None or not turn.think.strip() or not _clean(turn.think) or turn.tool_calls:
        return False
    match = re.fullmatch(r"<answer>([\s\S]*?)</answer>", turn.body)
    return bool(match and match.group(1).strip() and _clean(match.group(1)))


def is_tool_turn(turn: AssistantTurn, tool_name: str, tool_arguments: Mapping[str, Any] | None) -> bool:
    """`<think>..</think>` then one call to `tool_name` (with exactly `tool_arguments` when given) and no answer."""
    if turn.think is None or not turn.think.strip() or not _clean(turn.think) or turn.body or not turn.calls_at_end:
        return False
    if len(turn.tool_calls) != 1:
        return False
    call = turn.tool_calls[0]
    return call.name == tool_name and (tool_arguments is None or call.arguments == dict(tool_arguments))
