"""The `hf` judge: a local transformers causal LM with the `openai` judge's prompt, verdicts constrained or generated.

Why: judge in-process when there is no server (a laptop, a CI box, a single-GPU run), with exactly the prompt of the
`openai` judge, so results are comparable. Two ways to get the verdict (`verdict`):
- `constrained` (default): the prompt, then the forced prefix `VERDICT:`; the verdict is whichever of CORRECT /
  INCORRECT the model finds more probable there (constrained.py: spelling variants, multi-token words). Every item
  gets a verdict, one forward pass per batch, nothing to parse. `soft_score: true` returns P(CORRECT) instead of 0/1.
- `generate`: batched greedy `generate`, then the strict parser; unparseable output is a counted failure.
Measured on SmolLM2-135M-Instruct (2 CPU cores): `generate` parsed 0 of 12 replies; `constrained` gives a verdict for
every item (how good those verdicts are: `adaptune judge-eval`, docs/judges.md).
Model calls run in a worker thread so the async `score` never blocks TRL's event loop; a lock keeps one call at a
time on the model.

For tests or custom backends of `generate` pass `generate_fn`: it receives a batch of chat message lists and returns
one text per conversation (no model is loaded then).

    judge = HFJudge(HFJudgeConfig(model_path="Qwen/Qwen3-1.7B", device="cuda"))
    judge = HFJudge(HFJudgeConfig(verdict="generate"), generate_fn=lambda batch: ["VERDICT: CORRECT"] * len(batch))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adaptune.registry import JUDGES

from .base import BaseJudge, JudgeItem, Verdict
from .constrained import VerdictCandidates, first_token_probs, sequence_probs, verdict_candidates
from .prompt import VERDICT_PREFIX, build_messages, parse_verdict

Messages = list[dict[str, str]]
GenerateFn = Callable[[list[Messages]], list[str]]


@dataclass
class HFJudgeConfig:
    """Settings of the local transformers judge."""

    model_path: str | None = field(default=None, metadata={"help": "local folder or hub id of a causal LM"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    dtype: str = field(default="auto", metadata={"help": "'auto', 'float32', 'bfloat16', 'float16'"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate call"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per verdict"})
    use_chat_template: bool = field(default=True, metadata={"help": "render with the tokenizer's chat template"})
    verdict: str = field(default="constrained", metadata={
        "help": "'constrained': compare P(CORRECT) and P(INCORRECT) after a forced 'VERDICT:' (every item gets a "
                "verdict); 'generate': free generation and the strict parser"})
    soft_score: bool = field(default=False, metadata={
        "help": "constrained only: the score is P(CORRECT) in [0, 1] instead of 1.0 / 0.0"})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        if self.verdict not in ("constrained", "generate"):
            raise ValueError(f"judge key verdict must be 'constrained' or 'generate', got {self.verdict!r}")
        if self.soft_score and self.verdict != "constrained":
            raise ValueError("judge key soft_score needs verdict: constrained (generated text has no probability)")


@JUDGES.register("hf")
class HFJudge(BaseJudge):
    """Local LLM judge; pass `model`/`tokenizer` objects, a `model_path`, or a scripted `generate_fn`."""

    name = "hf"
    config_class = HFJudgeConfig

    def __init__(
        self,
        config: HFJudgeConfig | None = None,
        model: Any = None,
        tokenizer: Any = None,
        generate_fn: GenerateFn | None = None,
    ) -> None:
        super().__init__()
        self.config = config or HFJudgeConfig()
        self.model, self.tokenizer, self.generate_fn = model, tokenizer, generate_fn
        if generate_fn is None and model is None and self.config.model_path is None:
            raise ValueError("the hf judge needs model_path (or model + tokenizer, or a generate_fn)")
        if generate_fn is not None and self.config.verdict == "constrained":
            raise ValueError("a generate_fn returns text: use it with verdict='generate' (constrained needs a model)")
        self._lock = threading.Lock()
        self._candidates: VerdictCandidates | None = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.config
        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
        if self.model is None:
            dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
            self.model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=dtype).to(cfg.device).eval()

    def render(self, messages: Messages) -> str:
        """Prompt text for one conversation: the chat template when there is one, else a plain transcript."""
        tok = self.tokenizer
        if self.config.use_chat_template and getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def _generate(self, batch: list[Messages]) -> list[str]:
        if self.generate_fn is not None:
            return list(self.generate_fn(batch))
        import torch

        if self.model is None or self.tokenizer is None:
            self._load()
        tok, model = self.tokenizer, self.model
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"  # decoder-only: pad on the left so every row ends where generation starts
        enc = tok([self.render(m) for m in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=self.config.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        return tok.batch_decode(new_tokens, skip_special_tokens=True)

    def verdict_probabilities(self, batch: list[Messages]) -> list[float]:
        """P(CORRECT) per conversation after the forced `VERDICT:` prefix (constrained.py)."""
        if self.model is None or self.tokenizer is None:
            self._load()
        tok, model = self.tokenizer, self.model
        if self._candidates is None:
            self._candidates = verdict_candidates(tok)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad_id is None:
            pad_id = 0  # padded positions are masked out; any id will do
        prompts = [tok.encode(self.render(m) + VERDICT_PREFIX, add_special_tokens=False) for m in batch]
        if self._candidates.first_tokens_separate:
            return first_token_probs(model, prompts, self._candidates, pad_id)
        return sequence_probs(model, prompts, self._candidates, pad_id)

    def _run_locked(self, batch: list[Messages]) -> list[str] | list[float]:
        with self._lock:
            if self.config.verdict == "constrained":
                return self.verdict_probabilities(batch)
            return self._generate(batch)

    def _constrained_verdict(self, probability: float) -> Verdict:
        score = probability if self.config.soft_score else float(probability >= 0.5)
        return Verdict(score, raw=f"P(CORRECT)={probability:.4f}")

    async def score(self, items: list[JudgeItem]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        size = self.config.batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            batch = [build_messages(i.question, i.references, i.answer) for i in chunk]
            self.counters["requests"] += len(chunk)
            self.counters["batches"] += 1
            try:
                outputs = await asyncio.to_thread(self._run_locked, batch)  # texts, or P(CORRECT) when constrained
                if len(outputs) != len(chunk):
                    raise ValueError(f"the model returned {len(outputs)} results for {len(chunk)} prompts")
            except Exception as exc:  # noqa: BLE001 - a failed batch is a counted failure, not a crash
                self.counters["errors"] += len(chunk)
                verdicts += [Verdict(None, f"generation failed: {type(exc).__name__}: {exc}") for _ in chunk]
                continue
            if self.config.verdict == "constrained":
                verdicts += [self._constrained_verdict(float(p)) for p in outputs]
                continue
            for text in outputs:
                score = parse_verdict(text)
                if score is None:
                    self.counters["parse_failures"] += 1
                    verdicts.append(Verdict(None, "judge output is not a verdict line", text))
                else:
                    verdicts.append(Verdict(score, raw=text))
        return verdicts
