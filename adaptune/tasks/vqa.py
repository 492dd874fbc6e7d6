"""`vqa_sft`: supervised fine-tuning of a VLM on (image, question, answer) rows, answer-only loss.

The default data is GlyphQA (`adaptune.data.glyphqa`); `dataset` takes any dataset spec of `adaptune.data.sources`
(docs/datasets.md): a `save_to_disk` folder, parquet / JSON-lines files, a hub id, with a column map or the shipped
`visionthink` schema (`dataset: {path: data/*.parquet, schema: visionthink}`). Rows stay Arrow-backed with images
encoded; a batch decodes its own images. Evaluation generates greedily and reports accuracy overall and per question
kind, plus the visual tokens each answer cost.

For a method's objective the task provides LOGITS (the LM's next-token logits at the answer positions, recomputable
on the same batch, so R-AMT's gradient dropout compares frozen and current next-token distributions there) and BUDGET
(`collate(rows, budget=N)` builds the batch with N visual tokens per image through `adaptune.budget.BudgetProcessor`,
so a TokenFLEX adapter trains with its per-batch budget sampling here too).

    task: {name: vqa_sft, params: {dataset: glyphqa, num_train: 2000, resolution: full}}
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..budget.placeholders import BudgetProcessor
from ..budget.protocol import DIRECT_THOUGHT, direct_answer, render, user_messages
from ..budget.resolution import downsample
from ..data.sources import check_pixel_range, fit_pixels, load_source, parse_spec
from ..data.validate import check_dataset_images, prepare_image, prepare_vqa_row
from ..registry import TASKS
from .base import BUDGET, LOGITS, Task, TaskLoss

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(text: str) -> str:
    """The text inside the last <answer>...</answer>, or the whole text when there is no tag."""
    found = _ANSWER_RE.findall(text)
    return (found[-1] if found else text).strip()


def normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def load_vqa_rows(dataset: Any, split: str, n: int, seed: int, key: str = "task.params.dataset") -> Any:
    """Rows with image/question/answer[/kind] of `split` from any dataset spec (`adaptune.data.sources`): generated
    GlyphQA, or a `datasets.Dataset` whose images decode when a row is read."""
    data = load_source(dataset, split, n, key=key, seed=seed)
    if parse_spec(dataset, key).path != "glyphqa":
        check_dataset_images(data)  # a corrupt file or a bomb is an InputError naming the row, not a PIL trace later
    return data


def take_rows(rows: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows of a list or a `datasets.Dataset`, as a list of dicts."""
    n = len(rows) if limit is None else min(limit, len(rows))
    return [rows[i] for i in range(n)]


ANSWER_FORMATS = ("tagged", "plain", "protocol")


@dataclass
class VQAParams:
    dataset: Any = "glyphqa"
    """A dataset spec (docs/datasets.md): "glyphqa", a folder, parquet / JSON-lines files, a hub id, or a mapping
    {path, split, columns, schema, name, image_root}."""
    num_train: int = 2000
    num_eval: int = 200
    resolution: str = "full"
    """"full" or "half": the image size the model sees (half = width/2 x height/2, a quarter of the tokens)."""
    answer_format: str = "tagged"
    """"tagged": targets are `<think>...</think><answer>X</answer>`; "plain": the bare answer; "protocol": the
    resolution protocol's prompt (system prompt + resize tool schema, `adaptune.budget.protocol`) and its direct-answer
    turn, i.e. exactly the text the two-turn loop and GRPO use (so budget methods train on what they are evaluated
    on)."""
    max_new_tokens: int = 24
    eval_batch_size: int = 16
    min_pixels: int | None = None
    """Images with fewer pixels are scaled up to this many before `resolution` applies (VisionThink: 512 * 512)."""
    max_pixels: int | None = None
    """Images with more pixels are scaled down to this many before `resolution` applies (VisionThink: 2048 * 2048)."""

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {self.answer_format!r}")
        check_pixel_range(self.min_pixels, self.max_pixels)
        parse_spec(self.dataset, "task.params.dataset")  # a malformed spec fails with the recipe


def resize_for(image: Image.Image, resolution: str, min_pixels: int | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """The image the model sees at `resolution`: as is ("full") or through the one downsampler ("half"); both through
    `adaptune.data.validate.prepare_image` (never a plain `.convert("RGB")`), after the pixel range, if one is set."""
    if min_pixels is not None or max_pixels is not None:
        image = fit_pixels(prepare_image(image), min_pixels, max_pixels)
    if resolution == "half":
        return downsample(image, 0.5)
    if resolution != "full":
        raise ValueError(f"resolution must be 'full' or 'half', got {resolution!r}")
    return prepare_image(image)


@TASKS.register("vqa_sft")
class VQATask(Task):
    Params = VQAParams
    description = "VLM supervised fine-tuning on image/question/answer rows (GlyphQA by default)"
    provides = frozenset({LOGITS, BUDGET})
    _budget: int | None = None
    _budget_processor: BudgetProcessor | None = None

    # -- visual-token budgets -------------------------------------------------------------------------------------
    @property
    def processor(self) -> Any:
        """The family processor, wrapped to emit the current budget's placeholder count while one is set."""
        if self._budget is None:
            return self.loaded.processor
        if self._budget_processor is None:
            scale = getattr(self.params, "scale_factor", None)
            scale = scale or getattr(getattr(self.loaded.model, "config", None), "scale_factor", None) or 2
            self._budget_processor = BudgetProcessor(self.loaded.processor, scale_factor=int(scale))
        return self._budget_processor.with_budget(self._budget)

    def use_budget(self, budget: int | None) -> None:
        """Build every batch and generation with `budget` visual tokens per image from now on (None: the family's
        own count); `at_budget` still overrides it for one call (TokenFLEX's per-batch budget)."""
        self._budget = None if budget is None else int(budget)

    @contextlib.contextmanager
    def at_budget(self, budget: int | None) -> Iterator[None]:
        """Batches and generations inside use `budget` visual tokens per image (None: leave the current setting)."""
        if budget is None:
            yield
            return
        previous, self._budget = self._budget, int(budget)
        try:
            yield
        finally:
            self._budget = previous

    def build_datasets(self) -> dict[str, Any]:
        p = self.params
        return {
            "train": load_vqa_rows(p.dataset, "train", p.num_train, self.seed),
            "validation": load_vqa_rows(p.dataset, "validation", p.num_eval, self.seed),
            "test": load_vqa_rows(p.dataset, "test", p.num_eval, self.seed),
        }

    # -- batching -------------------------------------------------------------------------------------------------
    def _view(self, image: Image.Image, resolution: str) -> Image.Image:
        return resize_for(image, resolution, self.params.min_pixels, self.params.max_pixels)

    def _target(self, answer: str) -> str:
        if self.params.answer_format == "plain":
            return answer
        if self.params.answer_format == "protocol":
            return direct_answer(DIRECT_THOUGHT, answer)
        return f"<think>I look at the image.</think><answer>{answer}</answer>"

    def _prompt(self, question: str) -> str:
        if self.params.answer_format == "protocol":
            return render(self.processor, user_messages(question), generation_prompt=True)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def collate(self, rows: list[dict[str, Any]], budget: int | None = None) -> dict[str, Any]:
        """Prompt + target token ids with answer-only labels; `budget`: visual tokens per image (BUDGET)."""
        with self.at_budget(budget):
            return self._collate(rows)

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        tok = self.processor.tokenizer
        rows = [prepare_vqa_row(r, i) for i, r in enumerate(rows)]
        images = [self._view(r["image"], self.params.resolution) for r in rows]
        eos = tok.eos_token or ""
        prompts = [self._prompt(r["question"]) for r in rows]
        targets = [self._target(str(r["answer"])) + eos for r in rows]
        tok.padding_side = "right"
        batch = self.processor(images=images, text=[p + t for p, t in zip(prompts, targets)],
                               return_tensors="pt", padding=True)
        labels = torch.full_like(batch["input_ids"], -100)
        for i, target in enumerate(targets):
            n = len(tok(target, add_special_tokens=False).input_ids)
            length = int(batch["attention_mask"][i].sum())
            labels[i, length - n:length] = batch["input_ids"][i, length - n:length]
        batch["labels"] = labels
        return dict(batch)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> TaskLoss:
        out = model(**batch)
        targets = batch["labels"][:, 1:] != -100  # logits at t predict token t + 1

        def answer_logits(logits: torch.Tensor) -> torch.Tensor:
            return logits[:, :-1][targets]

        return TaskLoss(out.loss, {}, logits=answer_logits(out.logits),
                        reference=lambda: answer_logits(model(**batch).logits))

    # -- evaluation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_answers(self, model: torch.nn.Module, rows: list[dict[str, Any]], resolution: str | None = None,
                         budget: int | None = None) -> list[dict[str, Any]]:
        """Greedy answers for `rows`, with the visual tokens each one cost (at `budget` tokens per image if given)."""
        with self.at_budget(budget):
            return self._generate_answers(model, rows, resolution)

    def _generate_answers(self, model: torch.nn.Module, rows: list[dict[str, Any]], resolution: str | None
                          ) -> list[dict[str, Any]]:
        resolution = resolution or self.params.resolution
        tok = self.processor.tokenizer
        image_token_id = tok.convert_tokens_to_ids(self.loaded.family.image_token)
        results = []
        model.eval()
        for start in range(0, len(rows), self.params.eval_batch_size):
            chunk = [prepare_vqa_row(r, start + i) for i, r in enumerate(rows[start:start + self.params.eval_batch_size])]
            tok.padding_side = "left"
            batch = self.processor(images=[self._view(r["image"], resolution) for r in chunk],
                                   text=[self._prompt(r["question"]) for r in chunk], return_tensors="pt",
                                   padding=True)
            t0 = time.perf_counter()
            out = model.generate(**batch, max_new_tokens=self.params.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            latency = (time.perf_counter() - t0) / len(chunk)
            texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for row, text, ids in zip(chunk, texts, batch["input_ids"]):
                answer = extract_answer(text)
                results.append({
                    "question": row["question"], "reference": str(row["answer"]), "prediction": answer,
                    "raw": text, "kind": row.get("kind", "all"),
                    "correct": normalize(answer) == normalize(str(row["answer"])),
                    "visual_tokens": int((ids == image_token_id).sum()), "latency_s": latency,
                })
        return results

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "validation", limit: int | None = None) -> dict[str, Any]:
        rows = take_rows(self.datasets()[split], limit)
        return summarize(self.generate_answers(model, rows))


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and per kind, mean visual tokens and latency per answer."""
    if not results:
        return {"accuracy": float("nan"), "n": 0}
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by_kind[r["kind"]].append(r["correct"])
    summary = {
        "accuracy": sum(r["correct"] for r in results) / len(results),
        "visual_tokens": sum(r["visual_tokens"] for r in results) / len(results),
        "latency_s": sum(r["latency_s"] for r in results) / len(results),
        "n": len(results),
    }
    for kind, values in sorted(by_kind.items()):
        summary[f"accuracy/{kind}"] = sum(values) / len(values)
    return summary
