"""`BudgetProcessor`: a processor wrapper that emits exactly N image placeholder tokens per image for a visual-token
budget. Shared by every budget method: TokenFLEX (`flex_projector`, which re-exports it as `FlexProcessor`) and the
training-free token reducers (`adaptune.budget.reducers`).

Why a wrapper and not a subclass: it works the same for every supported family. The upstream processor runs as usual
(images, chat template, padding); then each image's run of placeholder tokens is rewritten to the budget's length,
every per-token tensor (attention_mask, mm_token_type_ids, ...) is rebuilt to match, and the batch is re-padded on
the tokenizer's padding side. For Qwen-VL the budget's grid also goes into `image_grid_thw` (pooled: what M-RoPE and
the language side must see, so generation positions stay right) while the real patch grid moves to
`vision_grid_thw` (what the vision tower needs). Everything else is delegated to the wrapped processor
(`apply_chat_template`, `tokenizer`, `batch_decode`, ...).

    bp = BudgetProcessor(processor)                  # or budget_processor(processor, budget=9)
    batch = bp(images=imgs, text=prompts, budget=9, return_tensors="pt", padding=True)
    (batch["input_ids"] == image_token_id).sum()     # 9 per image
    model(**batch); model.generate(**batch)          # a budget method reads the budget back from the batch

`budget=None` leaves the processor's own output untouched (the family's default token count).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import BatchFeature

from .grid import Budget, BudgetError, budget_tokens, resolve_grid


def _kind(processor: Any) -> str:
    names = [cls.__name__ for cls in type(processor).__mro__]
    if any(n.startswith(("Qwen3VLProcessor", "Qwen2_5_VLProcessor", "Qwen2VLProcessor")) for n in names):
        return "qwen"
    if any(n in ("Idefics3Processor", "SmolVLMProcessor") for n in names):
        return "idefics3"
    if any(n == "LlavaProcessor" for n in names):
        return "llava"
    raise TypeError(f"BudgetProcessor supports Qwen-VL, LLaVA and Idefics3/SmolVLM processors, got "
                    f"{type(processor).__name__}")


class BudgetProcessor:
    """Wraps a VLM processor; `__call__(..., budget=N)` emits N placeholder tokens per image.

    `scale_factor` (Idefics3/SmolVLM only) is the connector's pixel-shuffle factor, used to check that a budget fits
    the image's patch grid (pass `model.config.scale_factor` for checkpoints that do not use 2).
    """

    def __init__(self, processor: Any, budget: Budget | None = None, scale_factor: int = 2) -> None:
        self.processor = processor
        self.budget = budget
        self.scale_factor = scale_factor
        self.kind = _kind(processor)

    def with_budget(self, budget: Budget | None) -> BudgetProcessor:
        """A copy of this wrapper whose default budget is `budget`."""
        return BudgetProcessor(self.processor, budget, self.scale_factor)

    def __getattr__(self, name: str) -> Any:
        if name == "processor":
            raise AttributeError(name)
        return getattr(self.processor, name)

    @property
    def image_token_id(self) -> int:
        tok = self.processor.tokenizer
        token = getattr(self.processor, "image_token", None) or "<image>"
        return int(tok.convert_tokens_to_ids(token))

    def __call__(self, *args: Any, budget: Budget | None = None, **kwargs: Any) -> BatchFeature:
        budget = self.budget if budget is None else budget
        batch = self.processor(*args, **kwargs)
        if budget is None or "pixel_values" not in batch:
            return batch
        if not isinstance(batch["input_ids"], torch.Tensor):
            raise ValueError("BudgetProcessor needs return_tensors='pt'")
        ids = batch["input_ids"]
        stock_total = int((ids == self.image_token_id).sum())
        if self.kind == "qwen":
            real = batch["image_grid_thw"]
            merge = int(self.processor.image_processor.merge_size)
            grids = [resolve_grid(budget, (int(h), int(w))) for _, h, w in real.tolist()]
            stock = [int(t * h * w) // merge**2 for t, h, w in real.tolist()]
            new = [h * w for h, w in grids]
            language = real.clone()
            language[:, 1] = torch.tensor([h * merge for h, _ in grids])
            language[:, 2] = torch.tensor([w * merge for _, w in grids])
        else:
            images = self._count_images(batch)
            if images == 0 or stock_total % images:
                raise ValueError(f"{stock_total} placeholder tokens cannot be split over {images} images")
            per_image = stock_total // images
            side = self._patch_side(per_image)
            hw = resolve_grid(budget, (side, side))
            if isinstance(budget, (tuple, list)):
                ruled = resolve_grid(budget_tokens(budget), (side, side))
                if ruled != hw:  # the model only sees the count, and lays it out by the budget rule
                    raise BudgetError(f"{self.kind} models lay a count out by the budget rule: ask for "
                                      f"{budget_tokens(budget)} tokens (grid {ruled}), not the grid {tuple(budget)}")
            stock, new = [per_image] * images, [hw[0] * hw[1]] * images
        self._rewrite_runs(batch, stock, new)
        if self.kind == "qwen":
            batch["vision_grid_thw"] = real
            batch["image_grid_thw"] = language
        return batch

    # -------------------------------------------------------------------------------------------------- helpers
    def _count_images(self, batch: BatchFeature) -> int:
        pixels = batch["pixel_values"]
        if self.kind == "idefics3":  # (batch, crops, 3, H, W), padding crops are all zero
            flat = pixels.reshape(-1, *pixels.shape[2:])
            return int((flat.flatten(1) != 0).any(dim=1).sum())
        return int(pixels.shape[0])

    def _patch_side(self, per_image: int) -> int:
        if self.kind == "idefics3":
            side = math.isqrt(per_image)
            return side * self.scale_factor
        for extra in (0, 1):  # LLaVA's "full" strategy keeps the CLS token
            side = math.isqrt(per_image - extra)
            if side * side == per_image - extra:
                return side
        raise ValueError(f"cannot infer a square patch grid from {per_image} placeholder tokens per image")

    def _rewrite_runs(self, batch: BatchFeature, stock: list[int], new: list[int]) -> None:
        ids = batch["input_ids"]
        token = self.image_token_id
        mask = batch.get("attention_mask")
        per_token = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.shape == ids.shape]
        rows: list[dict[str, list[int]]] = []
        image = 0
        for b in range(ids.shape[0]):
            keep = mask[b].bool() if mask is not None else torch.ones_like(ids[b], dtype=torch.bool)
            seq = {k: batch[k][b][keep].tolist() for k in per_token}
            src = seq["input_ids"]
            out: dict[str, list[int]] = {k: [] for k in per_token}
            i = 0
            while i < len(src):
                if src[i] != token:
                    for k in per_token:
                        out[k].append(seq[k][i])
                    i += 1
                    continue
                if image >= len(stock):
                    raise ValueError("more image placeholder runs than images in the batch")
                n_stock = stock[image]
                if src[i:i + n_stock] != [token] * n_stock:
                    raise ValueError(f"image {image}: expected a run of {n_stock} placeholder tokens")
                for k in per_token:
                    out[k].extend([seq[k][i]] * new[image])
                i += n_stock
                image += 1
            rows.append(out)
        if image != len(stock):
            raise ValueError(f"found {image} placeholder runs for {len(stock)} images")
        length = max(len(r["input_ids"]) for r in rows)
        left = getattr(self.processor.tokenizer, "padding_side", "right") == "left"
        pad_id = self.processor.tokenizer.pad_token_id or 0
        for k in per_token:
            pad_value = pad_id if k == "input_ids" else 0
            padded = []
            for r in rows:
                fill = [pad_value] * (length - len(r[k]))
                padded.append(fill + r[k] if left else r[k] + fill)
            batch[k] = torch.tensor(padded, dtype=batch[k].dtype)


def budget_processor(processor: Any, budget: Budget | None = None, scale_factor: int = 2) -> BudgetProcessor:
    """`BudgetProcessor(processor, budget)`: calls emit `budget` placeholder tokens per image unless told otherwise."""
    return BudgetProcessor(processor, budget, scale_factor)
