"""How many tokens one resize rollout needs: the arithmetic behind `grpo.trainer.max_completion_length: auto`.

What: `completion_budget` (two assistant turns of `grpo.env.turn_tokens` each, plus the tool turn that returns the full
image), `tool_suffix_tokens` (that tool turn, counted the way TRL builds it) and `resolve_completion_length` (turn
`auto` into the number, or refuse a number that is too small).

Why: TRL 1.16 counts the tool result, image tokens included, against `max_completion_length`, and silently drops a
tool result that does not fit. A budget too small for the full image would train a policy that never sees what
resizing buys, with no error anywhere; so the budget is computed from the processor, and a hand-set value below it is
a RecipeError that shows the sum.

How: the tool turn is the difference between the chat template rendered with and without the tool message (exactly
`GRPOTrainer._get_tool_suffix_ids`; a test checks the two agree), with its one image placeholder expanded to the
family's visual-token count for the largest full image of the first rows.

    budget = completion_budget(processor, family, [(128, 128)], turn_tokens=64)   # {"required": ..., ...}
    resolve_completion_length("auto", budget, "recipe.yaml: grpo")               # -> budget["required"]
"""

from __future__ import annotations

from typing import Any

from ..budget.protocol import tool_call, tool_result_message
from ..budget.two_turn import vision_token_ids
from ..config import RecipeError
from ..models import FamilySpec
from .sections import AUTO


def tool_suffix_tokens(processor: Any, image_tokens: int) -> int:
    """Tokens TRL appends for the tool turn that returns one image (as `GRPOTrainer._get_tool_suffix_ids` builds it:
    end of the assistant turn, the tool message with the image and its text, the next assistant header)."""
    tok = processor.tokenizer
    call = tool_call()
    call["function"]["arguments"] = {}
    dummy = [{"role": "user", "content": [{"type": "text", "text": "dummy"}]},
             {"role": "assistant", "content": [{"type": "text", "text": ""}], "tool_calls": [call]}]
    tool = tool_result_message()
    prefix = tok(processor.apply_chat_template(dummy, tokenize=False), add_special_tokens=False)["input_ids"]
    whole = tok(processor.apply_chat_template(dummy + [tool], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
    eos = [i for i, t in enumerate(prefix) if t == tok.eos_token_id]
    if eos:
        prefix = prefix[: eos[-1] + 1]
    image_pad = sum(t in vision_token_ids(processor)[:1] for t in whole[len(prefix):])  # one placeholder per image
    return len(whole) - len(prefix) + image_pad * (image_tokens - 1)


def completion_budget(processor: Any, family: FamilySpec, full_sizes: list[tuple[int, int]], turn_tokens: int,
                      ) -> dict[str, int]:
    """The `max_completion_length` a resize rollout needs: two assistant turns plus the tool turn with the image."""
    image_tokens = max(family.visual_tokens(processor, h, w) for (w, h) in full_sizes) if full_sizes else 0
    suffix = tool_suffix_tokens(processor, image_tokens) if image_tokens else 0
    return {"turn_tokens": turn_tokens, "image_tokens": image_tokens, "tool_turn_tokens": suffix,
            "required": 2 * turn_tokens + suffix}


def resolve_completion_length(value: Any, budget: dict[str, int], where: str) -> int:
    """`auto` (or unset) -> the required budget; an int at least that large -> itself; anything else -> RecipeError."""
    if value in (None, AUTO):
        return budget["required"]
    if not isinstance(value, int) or value < budget["required"]:
        raise RecipeError(
            f"{where}.trainer.max_completion_length={value!r} is too small for the resize path: the tool turn that "
            f"returns the full image takes {budget['tool_turn_tokens']} tokens ({budget['image_tokens']} of them image "
            f"tokens), plus 2 x grpo.env.turn_tokens={budget['turn_tokens']} for the two assistant turns = "
            f"{budget['required']}. TRL counts tool-result tokens in this budget and silently drops a tool result that "
            f"does not fit. Use 'auto' or at least {budget['required']}.")
    return value


__all__ = ["completion_budget", "resolve_completion_length", "tool_suffix_tokens"]
