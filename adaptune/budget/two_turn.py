"""The two-turn resolution loop with transformers `generate`, plus fixed baselines: the only copy in the package.

Why: a policy trained with a GRPO recipe answers from a downsampled image or calls `resize_image` first. In an app
the same protocol (system prompt, tool schema, tool turn) must run outside TRL; this module is that loop for a
batch, on any model whose chat template renders tool calls (the Qwen-VL families).

How (one batch):
1. render system prompt + tool schema + user turn with the LOW-resolution image; `generate`;
2. rows whose first turn holds a well-formed `resize_image(action="resize")` call get the assistant turn and a tool
   turn with the FULL image appended (exactly as TRL renders them during training) and generate again, continuing
   from the first turn's KV cache (only the new tail is prefilled; `adaptune.budget.prefix_cache`);
3. the answer is the text of the final turn's last `<answer>`; visual tokens count every image the model saw.
Baselines: `always="low"` (low image, the answer prefilled to be direct), `always="full"` (full image in the first
turn, direct), and `resize=[...]` (a forced decision per row, e.g. the oracle that resizes exactly on fine questions).
Vision special tokens are suppressed while sampling (a sampled `<|image_pad|>` would break the next forward).

    from adaptune.budget.two_turn import answer_with_resolution_policy
    results = answer_with_resolution_policy(model, processor, images, questions)   # full-resolution PIL images in
    results[0].answer, results[0].resized, results[0].visual_tokens, results[0].turns, results[0].raw

For GPUs, docs/visionthink.md shows the same protocol on vLLM (`LLM.chat(messages, tools=[tool_schema()])`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from PIL import Image

from ..models import ChatTemplateError, FamilySpec, detect_family, tool_template_problems
from .answers import assistant_turns, extract_answer
from .protocol import (
    RESIZE_THOUGHT,
    direct_prefix,
    is_resize_call,
    render,
    tool_call_message,
    tool_call_text,
    tool_result_message,
    user_messages,
)
from ..data.validate import prepare_image
from .prefix_cache import PrefixCache
from .resolution import TokenCounter, check_downsample_saves, downsample

DIRECT_PREFIX = direct_prefix()

VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<image>", "<video>")


@dataclass
class Result:
    """One answered question: the parsed answer, whether the full image was used, the visual tokens the model saw,
    the number of assistant turns and the raw text of each turn (prefills included)."""

    answer: str | None
    resized: bool
    visual_tokens: int
    turns: int
    raw: list[str] = field(default_factory=list)


def vision_token_ids(processor: Any) -> list[int]:
    """Ids of the vision special tokens the tokenizer knows (placeholders and image/video delimiters)."""
    tok = getattr(processor, "tokenizer", processor)
    ids = []
    for name in VISION_TOKENS:
        tid = tok.convert_tokens_to_ids(name)
        if tid is not None and tid != tok.unk_token_id and tid not in ids:
            ids.append(int(tid))
    return ids


@torch.no_grad()
def generate_texts(model: torch.nn.Module, processor: Any, texts: list[str], images: list[list[Image.Image]],
                   max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                   suppress: list[int] | None = None, cache: PrefixCache | None = None,
                   extends: Sequence[int | None] | None = None) -> list[str]:
    """Batched `generate` on rendered prompts (left padding); the new text, special tokens dropped.

    With `cache` and no `extends`, the call's KV cache is kept in `cache`; with `extends`, `texts[b]` continues row
    `extends[b]` of the call kept in `cache` (None: a row with nothing kept) and only the new tail is prefilled
    (`adaptune.budget.prefix_cache`; anything it cannot reuse exactly is re-encoded)."""
    tok = processor.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    try:
        flat = [im for ims in images for im in ims]
        batch = processor(text=texts, images=flat or None, padding=True, return_tensors="pt",
                          return_mm_token_type_ids=True)
    finally:
        tok.padding_side = side
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    extra: dict[str, Any] = {}
    if cache is not None and extends is not None:
        extra = cache.continuation(model, batch, extends) or {}
        if "cache" in extra:
            batch.pop("pixel_values", None)
    elif cache is not None:
        extra = cache.start(model, batch)
    eos = [i for i in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if i is not None]
    out = model.generate(**batch, **extra, max_new_tokens=max_new_tokens, do_sample=do_sample,
                         temperature=temperature if do_sample else None, top_p=None, top_k=None,
                         eos_token_id=eos, pad_token_id=tok.pad_token_id,
                         suppress_tokens=suppress if suppress is not None else vision_token_ids(processor))
    if cache is not None and extends is None:
        cache.keep(out, batch["attention_mask"])
    return tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def check_tool_template(processor: Any) -> None:
    """Refuse a chat template on which the tool turn would be lost (no tool rendering, or the full image dropped
    inside the tool message, as in the original Qwen2/2.5-VL templates): the second turn would silently answer
    without the image it asked for. Checked once per template text."""
    template = getattr(processor, "chat_template", None)
    if template is not None and getattr(processor, "_adaptune_tool_template_checked", None) == template:
        return
    problems = tool_template_problems(processor, response_parser=False)
    if problems:
        raise ChatTemplateError(
            "the processor's chat template cannot run the two-turn resize protocol (" + "; ".join(problems) + "). "
            "Load the model with `load_model(..., tool_calling=True)` (what adaptune's commands do) or set "
            "model.chat_template to a tool template such as adaptune's shipped one for the family")
    processor._adaptune_tool_template_checked = template


def answer_with_resolution_policy(
    model: torch.nn.Module,
    processor: Any,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    family: FamilySpec | None = None,
    low_images: Sequence[Image.Image | None] | None = None,
    downsample_factor: float = 0.5,
    always: Literal["low", "full"] | None = None,
    resize: Sequence[bool] | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 16,
    direct_prefix: str = DIRECT_PREFIX,
    kv_reuse: bool = True,
) -> list[Result]:
    """Answer each question with the two-turn resolution protocol (or a fixed baseline); one `Result` per row.

    `images` are the FULL-resolution images (anything `adaptune.data.validate.prepare_image` takes; a bad one raises
    `InputError` naming its index; a downsampled view that costs as many tokens as the full one warns with
    `PixelCapWarning`); the first turn shows `low_images` (default: `images` downsampled by
    `downsample_factor` in width and height). `always="low"|"full"` forces a direct answer on that image (the
    assistant turn is prefilled with `direct_prefix`); `resize` forces the decision per row (True: the tool turn is
    scripted and the model answers after seeing the full image; False: a direct answer on the low image).
    With `kv_reuse` (default) the second turn continues from the first turn's KV cache and prefills only the new
    tail (the model's call, the tool turn with the full image); `kv_reuse=False` re-encodes the whole conversation
    (same answers up to float rounding; `adaptune.budget.prefix_cache`).
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    if always not in (None, "low", "full"):
        raise ValueError(f"always must be None, 'low' or 'full', got {always!r}")
    if always is not None and resize is not None:
        raise ValueError("pass either `always` or `resize`, not both")
    if resize is not None and len(resize) != len(images):
        raise ValueError(f"resize has {len(resize)} entries for {len(images)} rows")
    family = family or detect_family(model)
    # The one validation path: modes converted (alpha on white, 16-bit rescaled), bombs and bad aspect refused by row.
    full = [prepare_image(im, row=i) for i, im in enumerate(images)]
    low = [(prepare_image(lo, row=i) if lo is not None else downsample(im, downsample_factor, row=i))
           for i, (lo, im) in enumerate(zip(low_images or [None] * len(full), full, strict=True))]
    cost = TokenCounter(family, processor)
    if low_images is None and always != "full":
        check_downsample_saves(family, processor, [im.size for im in full], downsample_factor,
                               "answer_with_resolution_policy", cost)

    if always is None and (resize is None or any(resize)):
        check_tool_template(processor)
    suppress = vision_token_ids(processor)
    was_training = model.training
    model.eval()
    results: list[Result] = []
    try:
        for start in range(0, len(full), batch_size):
            idx = list(range(start, min(len(full), start + batch_size)))
            results += _answer_batch(model, processor, [full[i] for i in idx], [low[i] for i in idx],
                                     [questions[i] for i in idx], always,
                                     None if resize is None else [bool(resize[i]) for i in idx],
                                     cost, max_new_tokens, do_sample, temperature, direct_prefix, suppress,
                                     kv_reuse)
    finally:
        model.train(was_training)
    return results


def _requesting_turn(raw: str) -> dict[str, Any]:
    """The model's own tool-requesting turn (its reasoning kept) as the structured message the template renders."""
    turn = assistant_turns(raw)[0]
    return tool_call_message(turn.think, turn.body)


def _answer_batch(model, processor, full, low, questions, always, resize, cost, max_new_tokens, do_sample,
                  temperature, direct_prefix, suppress, kv_reuse) -> list[Result]:
    n = len(full)
    first_images = full if always == "full" else low
    # Which rows are forced to answer directly (prefilled) and which are scripted to resize.
    direct = [always is not None or (resize is not None and not resize[k]) for k in range(n)]
    scripted = [resize is not None and resize[k] for k in range(n)]
    raws: list[list[str]] = [[] for _ in range(n)]
    firsts: dict[int, str] = {}
    free = [k for k in range(n) if not scripted[k]]
    cache: PrefixCache | None = None
    if free:
        texts = [render(processor, user_messages(questions[k]), generation_prompt=True)
                 + (direct_prefix if direct[k] else "") for k in free]
        # Keep the first turn's KV cache only when some row may go on to a second turn.
        keep = kv_reuse and always is None and any(not direct[k] for k in free)
        cache = PrefixCache() if keep else None
        outs = generate_texts(model, processor, texts, [[first_images[k]] for k in free], max_new_tokens, do_sample,
                              temperature, suppress, **({"cache": cache} if cache is not None else {}))
        for k, out in zip(free, outs, strict=True):
            firsts[k] = (direct_prefix + out) if direct[k] else out
            raws[k].append(firsts[k])
    for k in range(n):
        if scripted[k]:
            firsts[k] = f"<think>{RESIZE_THOUGHT}</think>\n" + tool_call_text()
            raws[k].append(firsts[k])
    second = [k for k in range(n) if scripted[k] or (not direct[k] and is_resize_call(firsts[k]))]
    if second:
        texts = [render(processor, user_messages(questions[k]) + [_requesting_turn(firsts[k]), tool_result_message()],
                        generation_prompt=True) for k in second]
        reuse: dict[str, Any] = {}
        if cache is not None:  # row k of the chunk was row free.index(k) of the first call
            reuse = {"cache": cache, "extends": [free.index(k) if k in firsts and not scripted[k] else None
                                                 for k in second]}
        outs = generate_texts(model, processor, texts, [[low[k], full[k]] for k in second], max_new_tokens,
                              do_sample, temperature, suppress, **reuse)
        for k, out in zip(second, outs, strict=True):
            raws[k].append(out)
    results = []
    for k in range(n):
        resized = k in second
        seen = cost(first_images[k]) + (cost(full[k]) if resized else 0)
        results.append(Result(answer=extract_answer(raws[k][-1]), resized=resized, visual_tokens=seen,
                              turns=len(raws[k]), raw=raws[k]))
    return results


def summarize(results: Sequence[Result], correct: Sequence[bool], kinds: Sequence[str] | None = None,
              ) -> dict[str, dict[str, float]]:
    """{"all"|kind: {accuracy, visual_tokens, resize_rate, n}} for one method's results."""
    groups: dict[str, list[int]] = {"all": list(range(len(results)))}
    for i, kind in enumerate(kinds or []):
        groups.setdefault(str(kind), []).append(i)
    out = {}
    for name, rows in groups.items():
        m = max(1, len(rows))
        out[name] = {"accuracy": sum(bool(correct[i]) for i in rows) / m,
                     "visual_tokens": sum(results[i].visual_tokens for i in rows) / m,
                     "resize_rate": sum(results[i].resized for i in rows) / m, "n": len(rows)}
    return out


__all__ = ["DIRECT_PREFIX", "Result", "answer_with_resolution_policy", "generate_texts", "summarize",
           "vision_token_ids"]
