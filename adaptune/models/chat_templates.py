"""Chat templates: the checkpoint's own, adaptune's tool-calling ones, and the `model.chat_template` recipe key.

What: `original_chat_template(name)` (the original template of a real checkpoint, as the installed TRL package ships
it; the tiny builders use these, so tests see what a user's checkpoint brings), the tool-calling templates adaptune
ships (`TOOL_TEMPLATES`, files in `adaptune/models/templates/`, each with its response parser), the checks a template
must pass before TRL's multi-turn GRPO can run the resize tool on it (`tool_template_problems`), and
`prepare_chat_template`, which the loader calls to honour `model.chat_template`.

Why: a real Qwen2.5-VL checkpoint ships a template without tool calling, so TRL's `GRPOTrainer` refuses it; the
Qwen2.5 text template that does call tools drops images inside tool messages (TRL issue 5663), so the full image
the resize tool returns would never reach the model. A template that renders the calls but that TRL cannot parse
back, or that re-renders earlier turns differently once a tool message follows, breaks the tool loop just as
quietly. Each of these is checked here, on the processor, before any training starts.

How (`model.chat_template` in a recipe; `load_model(..., chat_template=..., tool_calling=...)` in code):
- unset (null): the checkpoint's own template. A GRPO recipe (tool calling) keeps it when it passes every check and
  otherwise switches to the family's shipped tool template (`FamilySpec.tool_template`), with a warning; a family
  without one is refused with an error that names `model.chat_template`;
- `checkpoint`: the checkpoint's own template, always; a GRPO recipe refuses it when it fails a check;
- a shipped name (`qwen2_5_vl_tools`, `qwen3_vl_tools`) or a path to a Jinja file: that template. A file gets the
  response parser of its family's shipped template when neither the tokenizer nor TRL has one for it; a GRPO recipe
  checks it like any other.

    processor.chat_template = shipped_chat_template("qwen2_5_vl_tools")
    tool_template_problems(processor)          # [] when TRL's tool loop can run on it
"""

from __future__ import annotations

import importlib.resources
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT = "checkpoint"
KEY = "model.chat_template"

# What a Qwen-family assistant turn looks like to `tokenizer.parse_response` (transformers' response templates):
# optional <think> reasoning, then text, then zero or more <tool_call>{json}</tool_call> blocks, ended by <|im_end|>.
QWEN_TOOL_RESPONSE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close_pattern": r"</think>\s*", "content": "text"},
        "tool_calls": {"open": "<tool_call>", "close_pattern": r"</tool_call>\s*", "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


class ChatTemplateError(ValueError):
    """A `model.chat_template` value that cannot be used, or a template that cannot run the resize tool."""


@dataclass(frozen=True)
class ToolTemplate:
    """A tool-calling chat template shipped with adaptune: its file and how TRL parses a response rendered by it."""

    name: str
    family: str
    response_template: dict[str, Any] = field(repr=False)

    @property
    def path(self) -> Path:
        return Path(str(importlib.resources.files("adaptune.models") / "templates" / f"{self.name}.jinja"))

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")


TOOL_TEMPLATES: dict[str, ToolTemplate] = {
    t.name: t for t in (ToolTemplate("qwen2_5_vl_tools", "qwen2_5_vl", QWEN_TOOL_RESPONSE),
                        ToolTemplate("qwen3_vl_tools", "qwen3_vl", QWEN_TOOL_RESPONSE))
}


def original_chat_template(name: str) -> str:
    """The original chat template of a real checkpoint (`qwen2_5_vl`, `qwen3_vl`, `llava_next`, `idefics3`, ...),
    read from the installed TRL package, which keeps byte-identical copies to recognise them."""
    return (importlib.resources.files("trl") / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def shipped_chat_template(name: str) -> str:
    """The text of one of adaptune's tool templates; the error lists them."""
    if name not in TOOL_TEMPLATES:
        raise ChatTemplateError(f"{KEY}: unknown template {name!r}; shipped: {', '.join(TOOL_TEMPLATES)}, "
                                f"{CHECKPOINT!r} or a path to a .jinja file")
    return TOOL_TEMPLATES[name].text()


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _image_token(processor: Any) -> str | None:
    return getattr(processor, "image_token", None) or getattr(_tokenizer(processor), "image_token", None)


def set_chat_template(processor: Any, template: str, response_template: dict[str, Any] | None = None) -> None:
    """Make `template` the processor's (and its tokenizer's) chat template; `response_template`, when given, is
    what `tokenizer.parse_response` (TRL's tool-call parsing) reads."""
    processor.chat_template = template
    tok = _tokenizer(processor)
    if tok is not processor:
        tok.chat_template = template
    if response_template is not None:
        tok.response_template = response_template


def _has_response_parser(processor: Any) -> bool:
    """A parser is set on the tokenizer, or TRL knows the template and sets one (as `GRPOTrainer` would)."""
    from trl.chat_template_utils import add_response_schema

    tok = _tokenizer(processor)
    if getattr(tok, "response_template", None) is not None or getattr(tok, "response_schema", None) is not None:
        return True
    try:
        add_response_schema(processor)
    except ValueError:
        return False
    return True


def _tool_conversation() -> list[dict[str, Any]]:
    """A resize rollout in miniature: user turn with an image, the call, the tool turn returning an image."""
    from PIL import Image

    call = {"type": "function", "function": {"name": "resize_image", "arguments": {"action": "resize"}}}
    image = {"type": "image", "image": Image.new("RGB", (56, 56))}
    return [{"role": "user", "content": [image, {"type": "text", "text": "question"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<think>small</think>"}], "tool_calls": [call]},
            {"role": "tool", "name": "resize_image", "content": [image, {"type": "text", "text": "result"}]}]


def tool_template_problems(processor: Any, response_parser: bool = True) -> list[str]:
    """Why TRL's multi-turn GRPO cannot run the resize tool on this processor's chat template ([] when it can):
    no tool calling, not prefix-preserving, images in tool messages dropped, or (with `response_parser`) tool calls
    that the response parser does not read back. adaptune's own two-turn inference parses calls itself and checks
    with `response_parser=False`."""
    from jinja2 import TemplateError
    from trl.chat_template_utils import is_chat_template_prefix_preserving, supports_tool_calling

    if not getattr(processor, "chat_template", None):
        return ["the processor has no chat template"]
    if not supports_tool_calling(processor):
        return ["it does not render tool calls and tool results (TRL's supports_tool_calling)"]
    problems = []
    try:
        if not is_chat_template_prefix_preserving(processor):
            problems.append("it is not prefix-preserving (earlier turns render differently once a tool message "
                            "follows; TRL's tool loop concatenates token ids)")
    except (TemplateError, TypeError, ValueError) as exc:
        problems.append(f"it fails on a tool conversation with an image ({exc.__class__.__name__}: {exc})")
    image_token = _image_token(processor)
    conversation = _tool_conversation()
    try:
        text = processor.apply_chat_template(conversation, tokenize=False)
    except (TemplateError, TypeError, ValueError) as exc:
        return [*problems, f"it fails on a tool message with an image ({exc.__class__.__name__}: {exc})"]
    if image_token and text.count(image_token) != 2:
        problems.append(f"it drops images inside tool messages ({text.count(image_token)} of 2 {image_token} "
                        "placeholders rendered), so the full image the resize tool returns would never reach "
                        "the model")
    if not response_parser:
        return problems
    if not _has_response_parser(processor):
        problems.append("TRL has no response parser for it (tool calls in completions would not be read back)")
    else:
        problems += _round_trip_problems(processor, conversation[:2])
    return problems


def _round_trip_problems(processor: Any, conversation: list[dict[str, Any]]) -> list[str]:
    """Render an assistant tool call with the template, parse it back with the tokenizer's parser, compare."""
    tok = _tokenizer(processor)
    user = conversation[:1]
    prefix = processor.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    whole = processor.apply_chat_template(conversation, tokenize=False)
    if not whole.startswith(prefix):
        return ["the generation prompt is not a prefix of the rendered assistant turn"]
    try:
        parsed = tok.parse_response(whole[len(prefix):], prefix=prefix)
    except (ValueError, TypeError, KeyError) as exc:
        return [f"its response parser fails on a tool call it rendered ({exc.__class__.__name__}: {exc})"]
    calls = [c.get("function", c) for c in (parsed or {}).get("tool_calls") or []]
    if [(c.get("name"), c.get("arguments")) for c in calls] != [("resize_image", {"action": "resize"})]:
        return [f"its response parser does not read back the tool call it rendered (got {calls!r})"]
    return []


def _read_choice(choice: str) -> tuple[str, dict[str, Any] | None]:
    if choice in TOOL_TEMPLATES:
        return shipped_chat_template(choice), TOOL_TEMPLATES[choice].response_template
    path = Path(choice).expanduser()
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        if not path.is_file():
            raise ChatTemplateError(f"{KEY}: template file {choice!r} does not exist")
        return path.read_text(encoding="utf-8"), None
    raise ChatTemplateError(f"{KEY}: {choice!r} is neither a shipped template ({', '.join(TOOL_TEMPLATES)}), "
                            f"{CHECKPOINT!r} nor a path to a .jinja file")


def prepare_chat_template(processor: Any, family: Any, choice: str | None = None, tool_calling: bool = False) -> str:
    """Apply `model.chat_template` (`choice`) to `processor` of `family` (a `FamilySpec`); with `tool_calling` also
    make sure TRL can run the resize tool on the result. Returns what is in use: "checkpoint", a shipped name or the
    file path. Raises `ChatTemplateError` naming `model.chat_template`."""
    shipped = TOOL_TEMPLATES.get(family.tool_template) if getattr(family, "tool_template", None) else None
    if choice in TOOL_TEMPLATES and TOOL_TEMPLATES[choice].family != family.name:
        raise ChatTemplateError(f"{KEY}: {choice!r} is the {TOOL_TEMPLATES[choice].family} template; this model is "
                                f"a {family.name} model ({family.tool_template or 'no shipped template'} fits it)")
    if choice not in (None, CHECKPOINT):
        text, parser = _read_choice(choice)
        if parser is None and choice not in TOOL_TEMPLATES:  # a user file: try TRL, then the family's parser
            set_chat_template(processor, text)
            if shipped is not None and not _has_response_parser(processor):
                _tokenizer(processor).response_template = shipped.response_template
        else:
            set_chat_template(processor, text, parser)
        used = choice
    else:
        used = CHECKPOINT
    if not tool_calling:
        return used
    problems = tool_template_problems(processor)
    if not problems:
        return used
    why = "; ".join(problems)
    if choice is None and shipped is not None:
        warnings.warn(f"the checkpoint's chat template cannot run the resize tool ({why}); using adaptune's "
                      f"{shipped.name!r} template instead (set {KEY} to choose another)", UserWarning, stacklevel=2)
        set_chat_template(processor, shipped.text(), shipped.response_template)
        left = tool_template_problems(processor)
        if left:  # pragma: no cover - a shipped template that fails its own checks is a bug
            raise ChatTemplateError(f"{KEY}: adaptune's {shipped.name!r} template fails: {'; '.join(left)}")
        return shipped.name
    source = "the checkpoint's chat template" if used == CHECKPOINT else f"template {used!r}"
    if shipped is not None:
        offer = (f"Unset {KEY} to use adaptune's {shipped.name!r}, or set it to a .jinja file that calls tools and "
                 "keeps images inside tool messages")
    else:
        offer = (f"Adaptune ships no tool template for family {family.name!r}; GRPO resolution policies run on the "
                 f"families that have one ({', '.join(t.family for t in TOOL_TEMPLATES.values())})")
    raise ChatTemplateError(f"{KEY}: {source} cannot run the resize tool: {why}. {offer}")


__all__ = ["CHECKPOINT", "ChatTemplateError", "QWEN_TOOL_RESPONSE", "TOOL_TEMPLATES", "ToolTemplate",
           "original_chat_template", "prepare_chat_template", "set_chat_template", "shipped_chat_template",
           "tool_template_problems"]
