"""Constrained verdicts: the probability of CORRECT vs INCORRECT instead of parsing free text.

Why: a small judge rarely ends its reply with the exact `VERDICT:` line the strict parser wants (SmolLM2-135M-Instruct
answers the question instead: 0 of 12 replies parsed), so every item is a failure. Forcing the prefix `VERDICT:` after
the prompt and comparing the model's probabilities of the two verdict words gives a verdict for every item, with
nothing left to parse - the answer text can only move the probabilities, never write the verdict.

Two sides:
- local models (`hf` judge): `verdict_candidates` tokenizes each verdict word as it would follow the prefix, with and
  without a leading space ("VERDICT: CORRECT" and "VERDICT:CORRECT"), so tokenizers that split a word into pieces
  ("COR" + "RECT") or give the space its own token are handled. When the first tokens already tell the two words
  apart (the common case) one forward pass scores a batch (`first_token_probs`); otherwise every variant's whole
  token sequence is scored (`sequence_probs`). P(CORRECT) = P(correct variants) / P(all variants).
- servers (`openai` judge): `probability_from_top_logprobs` reads the `top_logprobs` an OpenAI-compatible server
  returns at the verdict token; a returned token counts for a word when its stripped text starts that word and not
  the other (" COR" -> CORRECT, "IN" -> INCORRECT), so no tokenizer is needed.

    >>> p = probability_from_top_logprobs([{"token": " CORRECT", "logprob": -0.1}, {"token": " IN", "logprob": -2.4}])
    >>> round(p, 2)
    0.91
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .prompt import VERDICT_PREFIX, VERDICT_WORDS


@dataclass(frozen=True)
class VerdictCandidates:
    """Token-id continuations of the forced prefix for each verdict word (one tuple per spelling variant)."""

    correct: tuple[tuple[int, ...], ...]
    incorrect: tuple[tuple[int, ...], ...]

    @property
    def first_tokens_separate(self) -> bool:
        """Whether the first tokens alone tell the words apart (then one forward pass scores a batch)."""
        return not ({s[0] for s in self.correct} & {s[0] for s in self.incorrect})

    @property
    def all_token_ids(self) -> set[int]:
        return {t for seqs in (self.correct, self.incorrect) for s in seqs for t in s}


def _continuation(tokenizer: Any, prefix: str, text: str) -> tuple[int, ...]:
    """Token ids that `text` adds after `prefix`, tokenized together (merges across the boundary count)."""
    base = tokenizer.encode(prefix, add_special_tokens=False)
    ids = tokenizer.encode(prefix + text, add_special_tokens=False)
    if ids[: len(base)] == base and len(ids) > len(base):
        return tuple(ids[len(base) :])
    return tuple(tokenizer.encode(text, add_special_tokens=False))  # the boundary merged: tokenize the word alone


def verdict_candidates(tokenizer: Any, prefix: str = VERDICT_PREFIX) -> VerdictCandidates:
    """Spelling variants (leading space or not) of CORRECT and INCORRECT as token ids after `prefix`."""
    variants: dict[str, list[tuple[int, ...]]] = {}
    for word in VERDICT_WORDS:
        seqs: list[tuple[int, ...]] = []
        for spacing in (" ", ""):
            seq = _continuation(tokenizer, prefix, spacing + word)
            if seq and seq not in seqs:
                seqs.append(seq)
        if not seqs:
            raise ValueError(f"the judge tokenizer encodes {word!r} as no tokens")
        variants[word] = seqs
    correct, incorrect = variants["CORRECT"], variants["INCORRECT"]
    if set(correct) & set(incorrect):
        raise ValueError("the judge tokenizer cannot tell CORRECT from INCORRECT (same token ids)")
    return VerdictCandidates(tuple(correct), tuple(incorrect))


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def _forward_logprobs(model: Any, rows: Sequence[Sequence[int]], pad_id: int) -> Any:
    """Log-softmax over the vocabulary at every position of left-padded rows (positions follow the mask)."""
    import torch

    ids, mask = _left_pad(rows, pad_id)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    device = model.device
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=position_ids.to(device)).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def first_token_probs(model: Any, prompts: Sequence[Sequence[int]], candidates: VerdictCandidates,
                      pad_id: int) -> list[float]:
    """P(CORRECT) per prompt (token ids ending with the prefix) from the next-token distribution alone."""
    import torch

    logp = _forward_logprobs(model, prompts, pad_id)[:, -1, :]
    correct = sorted({s[0] for s in candidates.correct})
    incorrect = sorted({s[0] for s in candidates.incorrect})
    lc = torch.logsumexp(logp[:, correct], dim=-1)
    li = torch.logsumexp(logp[:, incorrect], dim=-1)
    return torch.sigmoid(lc - li).tolist()


def sequence_probs(model: Any, prompts: Sequence[Sequence[int]], candidates: VerdictCandidates,
                   pad_id: int) -> list[float]:
    """P(CORRECT) per prompt from the log-probability of every variant's whole token sequence."""
    import torch

    variants = [(True, s) for s in candidates.correct] + [(False, s) for s in candidates.incorrect]
    rows = [list(p) + list(s) for p in prompts for _, s in variants]
    logp = _forward_logprobs(model, rows, pad_id)
    width = logp.shape[1]
    out: list[float] = []
    for p_index in range(len(prompts)):
        scores: dict[bool, list[Any]] = {True: [], False: []}
        for v_index, (is_correct, seq) in enumerate(variants):
            row = p_index * len(variants) + v_index
            # the variant's tokens sit at the end of the row; token t is predicted at the position before it
            positions = range(width - len(seq) - 1, width - 1)
            scores[is_correct].append(sum(logp[row, pos, tok] for pos, tok in zip(positions, seq, strict=True)))
        lc = torch.logsumexp(torch.stack(scores[True]), dim=0)
        li = torch.logsumexp(torch.stack(scores[False]), dim=0)
        out.append(float(torch.sigmoid(lc - li)))
    return out


def _word_of(token: str) -> str | None:
    """Which verdict word a returned token begins, or None (" COR" -> CORRECT, "IN" -> INCORRECT, "," -> None)."""
    piece = token.strip()
    if not piece:
        return None
    starts = [w for w in VERDICT_WORDS if w.startswith(piece) or piece == w]
    return starts[0] if len(starts) == 1 else None


def probability_from_top_logprobs(top: Sequence[dict[str, Any]]) -> float | None:
    """P(CORRECT) from one position's `top_logprobs` list; None when neither word is among them."""
    mass = {w: 0.0 for w in VERDICT_WORDS}
    for entry in top:
        token, logprob = entry.get("token"), entry.get("logprob")
        word = _word_of(token) if isinstance(token, str) else None
        if word is not None and isinstance(logprob, (int, float)) and math.isfinite(logprob):
            mass[word] += math.exp(logprob)
    total = mass["CORRECT"] + mass["INCORRECT"]
    return mass["CORRECT"] / total if total > 0 else None


def verdict_token_index(tokens: Sequence[str], content: str, word_only: bool) -> int | None:
    """Index of the token that starts the verdict word in a reply, from the tokens' texts.

    `word_only`: the reply is the bare word (choice mode), so the first non-blank token. Otherwise the reply ends with
    a `VERDICT:` line and the verdict word is the first non-blank token after its colon. None when the tokens do not
    spell the content (the server's logprobs cannot be trusted then).
    """
    if "".join(tokens) != content:
        return None
    start = 0
    if not word_only:
        at = content.rfind(VERDICT_PREFIX)
        if at < 0:
            return None
        start = at + len(VERDICT_PREFIX)
    offset = 0
    for index, token in enumerate(tokens):
        end = offset + len(token)
        if end > start and token[max(0, start - offset) :].strip():
            return index
        offset = end
    return None
