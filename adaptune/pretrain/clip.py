"""Contrastive pre-training of a tiny CLIP on image-caption pairs, so frozen-backbone methods have knowledge to use.

What: `pretrain_tiny_clip(pairs, steps)` trains a seeded tiny `CLIPModel` with a multi-positive InfoNCE loss (rows
with the same caption are positives of each other, so duplicates are not pushed apart) on the companion caption pairs,
each caption shown in a random prompt template ("a photo of {caption}.", ...). Its zero-shot accuracy on the few-shot
colour-shape test set is measured and stored next to the weights.
Why: a randomly initialised backbone proves nothing about mask tuning or adapters.
How (deterministic for one settings dict; cached by a hash of the settings in `default_cache_dir()`):
    from adaptune.pretrain import pretrain_tiny_clip
    result = pretrain_tiny_clip(steps=600)        # -> .model, .processor, .path (a save_pretrained folder), .metrics
    python -m adaptune.pretrain                    # the same from the command line, plus the CLIPSeg
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..utils.io import atomic_dir
from .cache import cache_path, dataset_fingerprint, is_complete, mark_complete, read_metrics

TEMPLATES = ("{}", "{}.", "a photo of {}.", "an image of {}.", "a picture of {}.")


@dataclass
class TinyCLIPSettings:
    """Architecture and optimisation of the tiny CLIP (every field enters the cache key)."""

    seed: int = 0
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    num_pairs: int = 8000
    """Caption pairs generated when no `pairs` are given."""
    data_seed: int = 0


@dataclass
class Pretrained:
    """A pre-trained tiny model: the model, its processor, the cache folder it was saved to, measured metrics."""

    model: torch.nn.Module
    processor: Any
    path: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)


def build_clip(settings: TinyCLIPSettings) -> tuple[torch.nn.Module, Any]:
    from ..models import build_tiny

    vision = dict(hidden_size=settings.vision_hidden, intermediate_size=2 * settings.vision_hidden,
                  num_hidden_layers=settings.vision_layers, num_attention_heads=settings.heads,
                  patch_size=settings.patch_size)
    text = dict(hidden_size=settings.text_hidden, intermediate_size=2 * settings.text_hidden,
                num_hidden_layers=settings.text_layers, num_attention_heads=settings.heads)
    return build_tiny("clip", seed=settings.seed, image_size=settings.image_size, vision=vision, text=text,
                      projection_dim=settings.projection_dim)


def pixel_values_of(processor: Any, images: list[Any], chunk: int = 512) -> torch.Tensor:
    parts = []
    for start in range(0, len(images), chunk):
        batch = [im.convert("RGB") for im in images[start:start + chunk]]
        parts.append(processor.image_processor(batch, return_tensors="pt")["pixel_values"])
    return torch.cat(parts)


def multi_positive_infonce(logits_per_image: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with an identical caption counts as a positive."""
    keys = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([keys[c] for c in captions], device=logits_per_image.device)
    same = (ids[:, None] == ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = -(targets * F.log_softmax(logits_per_image, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits_per_image.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, processor: Any, split: str = "test", data_seed: int = 0,
                       limit: int | None = None) -> float:
    """Zero-shot accuracy on the few-shot colour-shape set (prompts "a photo of a {class}.")."""
    from ..data.companions import FewShotConfig, build_fewshot_split, class_prompts
    from ..tasks.fewshot_clip import clip_logits, prompt_embeddings

    cfg = FewShotConfig(seed=data_seed)
    if limit is not None:  # rows are seeded by index, so a shorter split is a prefix of the full one
        per_class = -(-limit // len(cfg.classes))
        cfg = FewShotConfig(seed=data_seed, validation_per_class=per_class, test_per_class=per_class)
    rows = build_fewshot_split(cfg, split)
    n = len(rows) if limit is None else min(limit, len(rows))
    was_training = model.training
    model.eval()
    text = prompt_embeddings(model, processor.tokenizer, class_prompts(cfg))
    labels = torch.tensor(rows["label"][:n])
    pixels = pixel_values_of(processor, rows["image"][:n])
    predictions = torch.cat([clip_logits(model, pixels[i:i + 256], text).argmax(-1) for i in range(0, n, 256)])
    model.train(was_training)
    return float((predictions == labels).float().mean())


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


def train_clip(model: torch.nn.Module, processor: Any, pairs: Any, steps: int, settings: TinyCLIPSettings,
               progress: bool = True) -> dict[str, float]:
    """The contrastive training loop (in place); returns the last smoothed loss."""
    rng = random.Random(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    pixels = pixel_values_of(processor, pairs["image"])
    captions = list(pairs["caption"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, settings.warmup_steps))
    model.train()
    smoothed = None
    order = torch.randperm(len(captions), generator=generator)
    cursor = 0
    bar = tqdm(range(steps), desc="pretrain tiny CLIP", disable=not progress)
    for _ in bar:
        if cursor + settings.batch_size > len(order):
            order, cursor = torch.randperm(len(captions), generator=generator), 0
        idx = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        batch_captions = [captions[i] for i in idx.tolist()]
        texts = [rng.choice(TEMPLATES).format(c) for c in batch_captions]
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels[idx])
        loss = multi_positive_infonce(out.logits_per_image, batch_captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP caps the temperature at 100
        value = loss.item()
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        bar.set_postfix(loss=f"{smoothed:.3f}")
    model.eval()
    return {"final_loss": round(smoothed or 0.0, 4)}


def _load_clip(path: Path) -> tuple[torch.nn.Module, Any]:
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)


def pretrain_tiny_clip(pairs: Any | None = None, steps: int = 600, *, settings: TinyCLIPSettings | None = None,
                       cache_dir: str | Path | None = None, use_cache: bool = True, progress: bool = True,
                       num_eval: int | None = None, **overrides: Any) -> Pretrained:
    """Train (or load from the cache) a tiny CLIP on image-caption `pairs` (default: generated companion pairs).

    `overrides` set fields of `TinyCLIPSettings`. The result's metrics hold `zero_shot_accuracy` (few-shot test split,
    12 classes, chance 1/12; the first `num_eval` rows, default all 600) and the training time.
    """
    import time

    from ..data.companions import FewShotConfig, generate_caption_pairs

    settings = settings or TinyCLIPSettings(**overrides)
    if pairs is None:
        pairs = generate_caption_pairs(FewShotConfig(seed=settings.data_seed), num_pairs=settings.num_pairs,
                                       num_validation=0)["train"]
        data_key = {"pairs": "generated", "num_pairs": settings.num_pairs}
    else:
        data_key = {"pairs": dataset_fingerprint(pairs, ("image", "caption"))}
    key = {"kind": "tiny_clip", "steps": steps, "num_eval": num_eval, **asdict(settings), **data_key}
    path = cache_path(cache_dir, "tiny_clip", key)
    if use_cache and is_complete(path):
        model, processor = _load_clip(path)
        return Pretrained(model, processor, path, read_metrics(path))
    model, processor = build_clip(settings)
    start = time.time()
    metrics: dict[str, Any] = train_clip(model, processor, pairs, steps, settings, progress)
    metrics["train_seconds"] = round(time.time() - start, 1)
    metrics["zero_shot_accuracy"] = round(zero_shot_accuracy(model, processor, limit=num_eval), 4)
    metrics["chance"] = round(1 / len(FewShotConfig().classes), 4)
    if not use_cache:
        return Pretrained(model, processor, None, metrics)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        mark_complete(tmp, key, metrics)
    return Pretrained(model, processor, path, metrics)
