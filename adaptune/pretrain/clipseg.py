"""A tiny CLIPSeg built on the pre-trained tiny CLIP, with its decoder pre-trained on part of the segmentation set.

What: `build_tiny_clipseg_from_clip(clip, seg_pairs, steps)` copies the CLIP encoders and projections into a
`CLIPSegForImageSegmentation` (same sizes; images are fed at `image_size` with interpolated position embeddings) and
trains only the decoder (CLIP frozen, as in CLIPSeg) on the first `num_rows` rows of the referring-segmentation train
split with the Dice (1.5) + BCE (1.0) loss. Baseline Dice / IoU on the test split are stored next to the weights.
Why: adapters and fine-tuning are then compared from a model that already segments somewhat, like a real CLIPSeg.
How:
    clip = pretrain_tiny_clip()
    seg = build_tiny_clipseg_from_clip(clip, steps=2000)     # -> Pretrained(model, processor, path, metrics)
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..utils.io import atomic_dir
from .cache import cache_path, dataset_fingerprint, is_complete, mark_complete, read_metrics
from .clip import Pretrained, _schedule


@dataclass
class TinyCLIPSegSettings:
    seed: int = 0
    image_size: int = 64
    reduce_dim: int = 32
    decoder_heads: int = 4
    decoder_intermediate: int = 64
    extract_layers: tuple[int, ...] | None = None
    """None = the quarter points of the vision depth (3, 6, 9 of 12; 1, 2, 3 of 4)."""
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup_steps: int = 30
    num_rows: int = 1200
    """Train rows (from the start of the split) the decoder sees; the segmentation task skips them."""
    data_seed: int = 0
    data_image_size: int = 96


def state_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_extract_layers(depth: int) -> tuple[int, ...]:
    layers = sorted({min(depth - 1, max(0, round(depth * k / 4))) for k in (1, 2, 3)})
    return tuple(layers)


def clipseg_from_clip(clip: torch.nn.Module, clip_processor: Any,
                      settings: TinyCLIPSegSettings) -> tuple[torch.nn.Module, Any]:
    """A CLIPSeg whose CLIP part is an exact copy of `clip`, with a seeded fresh decoder, and its processor."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    depth = clip.config.vision_config.num_hidden_layers
    config = CLIPSegConfig(
        text_config=clip.config.text_config.to_dict(), vision_config=clip.config.vision_config.to_dict(),
        projection_dim=clip.config.projection_dim, logit_scale_init_value=clip.config.logit_scale_init_value,
        extract_layers=list(settings.extract_layers or default_extract_layers(depth)), reduce_dim=settings.reduce_dim,
        decoder_num_attention_heads=settings.decoder_heads, decoder_intermediate_size=settings.decoder_intermediate,
    )
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        model = CLIPSegForImageSegmentation(config)
    result = model.clip.load_state_dict(clip.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"CLIP -> CLIPSeg weight copy failed: missing {missing}, unexpected "
                           f"{result.unexpected_keys}")
    clip_images = clip_processor.image_processor
    image_processor = ViTImageProcessorPil(size={"height": settings.image_size, "width": settings.image_size},
                                           image_mean=list(clip_images.image_mean),
                                           image_std=list(clip_images.image_std))
    processor = CLIPSegProcessor(image_processor=image_processor, tokenizer=clip_processor.tokenizer)
    return model.eval(), processor


def encode_rows(processor: Any, rows: Any, size: int) -> dict[str, torch.Tensor]:
    """Tokens, pixel values and {0,1} masks (at the model's output size) for every row."""
    images = [im.convert("RGB") for im in rows["image"]]
    batch = dict(processor(text=list(rows["prompt"]), images=images, padding=True, return_tensors="pt"))
    masks = [np.asarray(m.convert("L").resize((size, size), Image.NEAREST)) > 127 for m in rows["mask"]]
    batch["labels"] = torch.from_numpy(np.stack(masks)).float()
    return batch


@torch.no_grad()
def segmentation_scores(model: torch.nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 64,
                        threshold: float = 0.5) -> dict[str, float]:
    """Mean per-sample Dice and IoU of `model` on pre-encoded rows."""
    from ..tasks.segmentation import dice_iou, mask_logits

    was_training = model.training
    model.eval()
    dices, ious = [], []
    n = len(encoded["labels"])
    for start in range(0, n, batch_size):
        part = {k: v[start:start + batch_size] for k, v in encoded.items()}
        dice, iou = dice_iou(torch.sigmoid(mask_logits(model, part)) > threshold, part["labels"] > 0.5)
        dices.append(dice)
        ious.append(iou)
    model.train(was_training)
    return {"dice": round(float(torch.cat(dices).mean()), 4), "iou": round(float(torch.cat(ious).mean()), 4)}


def train_segmentation(model: torch.nn.Module, encoded: dict[str, torch.Tensor], steps: int, lr: float,
                       batch_size: int, seed: int, weight_decay: float = 1e-3, warmup: int = 30,
                       progress: bool = True, desc: str = "train CLIPSeg") -> float:
    """Train the parameters of `model` that require grad with Dice (1.5) + BCE (1.0); returns the smoothed loss."""
    from ..tasks.segmentation import mask_logits, segmentation_loss

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, warmup))
    generator = torch.Generator().manual_seed(seed)
    n = len(encoded["labels"])
    order, cursor, smoothed = torch.randperm(n, generator=generator), 0, None
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        batch = {k: v[idx] for k, v in encoded.items()}
        loss, _ = segmentation_loss(mask_logits(model, batch), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        optimizer.step()
        scheduler.step()
        value = loss.item()
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
    model.eval()
    return round(smoothed or 0.0, 4)


def refseg_rows(settings: TinyCLIPSegSettings, split: str, n: int) -> Any:
    from ..data.companions import RefSegConfig, build_refseg_split

    cfg = RefSegConfig(seed=settings.data_seed, image_size=settings.data_image_size)
    return build_refseg_split(cfg, split, num_images=n)


def _load_clipseg(path: Path) -> tuple[torch.nn.Module, Any]:
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    return CLIPSegForImageSegmentation.from_pretrained(path).eval(), CLIPSegProcessor.from_pretrained(path)


def build_tiny_clipseg_from_clip(clip: Pretrained | torch.nn.Module, seg_pairs: Any | None = None, steps: int = 2000,
                                 *, processor: Any | None = None, settings: TinyCLIPSegSettings | None = None,
                                 cache_dir: str | Path | None = None, use_cache: bool = True, progress: bool = True,
                                 num_eval: int = 200, **overrides: Any) -> Pretrained:
    """A tiny CLIPSeg from `clip` (a `Pretrained` or a CLIPModel plus `processor`), decoder pre-trained for `steps`
    on `seg_pairs` (default: the first `num_rows` generated referring-segmentation train rows). Metrics: `dice`, `iou`
    on `num_eval` test rows (and the same for the untrained decoder, `dice_untrained`)."""
    if isinstance(clip, Pretrained):
        clip, processor = clip.model, clip.processor
    if processor is None:
        raise ValueError("pass the CLIP processor (or a Pretrained result) so the tokenizer and normalisation match")
    settings = settings or TinyCLIPSegSettings(**overrides)
    if seg_pairs is None:
        seg_pairs = refseg_rows(settings, "train", settings.num_rows)
        data_key = {"seg_pairs": "generated"}
    else:
        data_key = {"seg_pairs": dataset_fingerprint(seg_pairs, ("image", "prompt", "mask"))}
    key = {"kind": "tiny_clipseg", "steps": steps, "clip": state_fingerprint(clip), "num_eval": num_eval,
           **asdict(settings), **data_key}
    path = cache_path(cache_dir, "tiny_clipseg", key)
    if use_cache and is_complete(path):
        model, seg_processor = _load_clipseg(path)
        return Pretrained(model, seg_processor, path, read_metrics(path))
    model, seg_processor = clipseg_from_clip(clip, processor, settings)
    test = encode_rows(seg_processor, refseg_rows(settings, "test", num_eval), settings.image_size)
    metrics: dict[str, Any] = {f"{k}_untrained": v for k, v in segmentation_scores(model, test).items()}
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("decoder."))
    train = encode_rows(seg_processor, seg_pairs, settings.image_size)
    start = time.time()
    metrics["final_loss"] = train_segmentation(model, train, steps, settings.lr, settings.batch_size, settings.seed,
                                               settings.weight_decay, settings.warmup_steps, progress,
                                               desc="pretrain CLIPSeg decoder")
    metrics["train_seconds"] = round(time.time() - start, 1)
    metrics.update(segmentation_scores(model, test))
    model.requires_grad_(True)
    if not use_cache:
        return Pretrained(model, seg_processor, None, metrics)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        seg_processor.save_pretrained(tmp)
        mark_complete(tmp, key, metrics)
    return Pretrained(model, seg_processor, path, metrics)
