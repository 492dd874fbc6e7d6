"""Offline tokenizers for tiny models.

There is no model hub on the machines this library is tested on, so every tiny model gets a byte-level BPE trained
here, in a fraction of a second, with the `tokenizers` library on local text, then wrapped in the Hugging Face
tokenizer class its family expects. The special tokens of the Qwen-VL family (vision markers, image/video pads, tool
calls, think tags) are always present so one tokenizer serves every family and TRL's tool-call parsing.

    tok = build_tokenizer()                          # default corpus, Qwen2-style tokenizer
    tok = build_tokenizer(corpus=my_lines, vocab_size=2000)
    clip_tok = build_tokenizer(style="clip")         # adds <|startoftext|> ... <|endoftext|> around each text
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    "<|startoftext|>",
)
# Not "special" (they must survive decoding with skip_special_tokens=True so tool calls and tags can be parsed).
QWEN_TEXT_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
)

_WORDS = (
    "the a an of to in on at is are was what which where how many there image picture shape colour color "
    "red green blue yellow purple orange black white gray grey pink brown circle square triangle star diamond "
    "left right above below top bottom middle center centre small big large tiny number digit word letter "
    "zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10 11 12 yes no true false "
    "answer question think tool call resize resize_image action function name arguments description parameters "
    "type object string enum required properties user assistant system you are a helpful look see the full "
    "resolution low high half because so i need to read it shows contains photo of segmentation mask dog cat car "
    "correct incorrect verdict score reference judge"
)


def default_corpus() -> list[str]:
    """A small, deterministic English corpus covering the library's prompts, answers and tool-call JSON."""
    words = _WORDS.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 7)]
    lines += [
        'Use the tool: <tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}}\n</tool_call>',
        "<think>I can see a red circle.</think><answer>red</answer>",
        "What colour is the square? How many shapes are there? Which digit is printed on the biggest shape?",
        "a photo of a blue triangle. a photo of a green star. the yellow circle is left of the purple square.",
        "VERDICT: CORRECT VERDICT: INCORRECT",
        "\\boxed{42} 3.14 -7 100%",
    ]
    return lines * 4


def _train_bpe(corpus: Iterable[str], vocab_size: int, special: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    return tok


def build_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    style: Literal["qwen", "clip", "llama"] = "qwen",
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE offline and wrap it as a Hugging Face fast tokenizer.

    Args:
        corpus: training text; the built-in `default_corpus()` when None.
        vocab_size: target vocabulary size (the result can be smaller on a small corpus).
        style: "qwen" gives a `Qwen2TokenizerFast` (pad <|endoftext|>, eos <|im_end|>); "clip" adds
            <|startoftext|>/<|endoftext|> around every text (CLIP and CLIPSeg pool at the end-of-text token);
            "llama" adds a BOS token in front.
    """
    special = list(QWEN_SPECIAL_TOKENS)
    tok = _train_bpe(corpus if corpus is not None else default_corpus(), vocab_size, special)
    if style == "clip":
        bos, eos = "<|startoftext|>", "<|endoftext|>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))]
        )
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos, unk_token=eos,
            model_max_length=model_max_length,
        )
    elif style == "llama":
        bos = "<|startoftext|>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=bos, eos_token="<|im_end|>", pad_token="<|endoftext|>",
            model_max_length=model_max_length,
        )
    else:
        wrapped = Qwen2TokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
            bos_token=None, model_max_length=model_max_length,
        )
    # Tags and tool-call markers are added tokens (one id each) but not special, so decoding keeps them.
    wrapped.add_tokens(list(QWEN_TEXT_TOKENS), special_tokens=False)
    return wrapped
