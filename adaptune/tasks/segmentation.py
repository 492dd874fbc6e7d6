"""`segmentation`: referring segmentation with a CLIPSeg-style model (text prompt -> mask logits).

What: the loss is Dice (weight 1.5) + binary cross-entropy (weight 1.0) on the sigmoid of the mask logits (VLSM-Adapter
recipe); evaluation thresholds the sigmoid at 0.5 and reports mean per-sample Dice and IoU. The task hands the mask
logits to the trainer as one Bernoulli distribution per pixel (rows [0, x], capability LOGITS), so a method's
objective can compare them with the frozen model's (R-AMT's gradient dropout: the KL of the per-pixel Bernoullis,
averaged over pixels).
Data: the referring-segmentation companion set (`adaptune.data.companions.generate_refseg`, prompts like "the red
triangle") or any saved `datasets` folder with `image`, `prompt`, `mask` columns. `train_offset` skips the first rows of
the train split (the rows `adaptune.pretrain` used to pre-train the CLIPSeg decoder), so adaptation sees new images.
How:
    task: {name: segmentation, params: {num_train: 600, train_offset: 1200}}
    python -m adaptune.pretrain            # builds the pre-trained tiny CLIPSeg this task expects as the model
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..registry import TASKS
from .base import LOGITS, Task, TaskLoss, on_device


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) against a {0,1} target, per sample over pixels, averaged over the batch."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(dim=1)
    dice = (2 * inter + eps) / (prob.sum(dim=1) + target.sum(dim=1) + eps)
    return (1 - dice).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.5,
                      bce_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """dice_weight * soft Dice loss + bce_weight * BCE on sigmoid outputs; returns (loss, parts to log)."""
    dice = soft_dice_loss(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return dice_weight * dice + bce_weight * bce, {"dice_loss": float(dice.detach()), "bce": float(bce.detach())}


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Dice and IoU of boolean masks (B, H, W); two empty masks score 1."""
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    inter = (pred & target).sum(dim=1).float()
    total = pred.sum(dim=1).float() + target.sum(dim=1).float()
    union = (pred | target).sum(dim=1).float()
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp_min(1))
    iou = torch.where(empty, torch.ones_like(inter), inter / union.clamp_min(1))
    return dice, iou


def mask_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, H, W) mask logits (CLIPSeg squeezes the batch dimension away for a single image)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"])
    logits = out.logits
    return logits.unsqueeze(0) if logits.dim() == 2 else logits


def bernoulli_rows(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2) categorical logits [0, x] per pixel: softmax([0, x]) = [1 - sigmoid(x), sigmoid(x)]."""
    flat = logits.reshape(-1)
    return torch.stack([torch.zeros_like(flat), flat], dim=-1)


def load_refseg_rows(dataset: str, split: str, n: int, offset: int, seed: int, image_size: int) -> Any:
    """Rows `offset .. offset + n` of `split` (generated referring-segmentation set or a saved folder)."""
    if dataset == "refseg":
        from ..data.companions import RefSegConfig, build_refseg_split

        cfg = RefSegConfig(seed=seed, image_size=image_size, num_train=max(1, offset + n), num_validation=n,
                           num_test=n)
        rows = build_refseg_split(cfg, split, num_images=offset + n if split == "train" else n)
    else:
        import datasets as hf_datasets

        rows = hf_datasets.load_from_disk(dataset)
        if isinstance(rows, hf_datasets.DatasetDict):
            rows = rows[split]
        missing = {"image", "prompt", "mask"} - set(rows.column_names)
        if missing:
            raise ValueError(f"{dataset}: rows lack columns {sorted(missing)}")
    start = offset if split == "train" else 0
    return rows.select(range(min(start, len(rows)), min(start + n, len(rows))))


@dataclass
class SegmentationParams:
    dataset: str = "refseg"
    """"refseg" (generated) or a `save_to_disk` folder with image / prompt / mask columns."""
    num_train: int = 600
    train_offset: int = 1200
    """Skip this many train rows (used by `adaptune.pretrain` for the decoder)."""
    num_eval: int = 200
    data_seed: int = 0
    image_size: int = 96
    """Canvas of the generated set (the processor resizes to the model's input size)."""
    dice_weight: float = 1.5
    bce_weight: float = 1.0
    threshold: float = 0.5
    eval_batch_size: int = 32


@TASKS.register("segmentation")
class SegmentationTask(Task):
    Params = SegmentationParams
    description = "Referring segmentation with CLIPSeg: Dice (1.5) + BCE (1.0) loss, Dice / IoU metrics"
    families = ("clipseg",)
    provides = frozenset({LOGITS})

    def build_datasets(self) -> dict[str, Any]:
        p = self.params
        load = lambda split, n, off: load_refseg_rows(p.dataset, split, n, off, p.data_seed, p.image_size)  # noqa: E731
        return {"train": load("train", p.num_train, p.train_offset), "validation": load("validation", p.num_eval, 0),
                "test": load("test", p.num_eval, 0)}

    def output_size(self) -> tuple[int, int]:
        size = self.processor.image_processor.size
        return int(size["height"]), int(size["width"])

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        height, width = self.output_size()
        images = [r["image"].convert("RGB") for r in rows]
        batch = dict(self.processor(text=[r["prompt"] for r in rows], images=images, padding=True,
                                    return_tensors="pt"))
        masks = [np.asarray(r["mask"].convert("L").resize((width, height), Image.NEAREST)) > 127 for r in rows]
        batch["labels"] = torch.from_numpy(np.stack(masks)).float()
        return batch

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> TaskLoss:
        logits = mask_logits(model, batch)
        loss, parts = segmentation_loss(logits, batch["labels"], self.params.dice_weight, self.params.bce_weight)
        return TaskLoss(loss, parts, logits=bernoulli_rows(logits),
                        reference=lambda: bernoulli_rows(mask_logits(model, batch)))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "validation", limit: int | None = None) -> dict[str, Any]:
        rows = self.datasets()[split]
        n = len(rows) if limit is None else min(limit, len(rows))
        was_training = model.training
        model.eval()
        dices, ious = [], []
        for start in range(0, n, self.params.eval_batch_size):
            rows_now = [rows[i] for i in range(start, min(n, start + self.params.eval_batch_size))]
            batch = on_device(self.collate(rows_now), model)
            pred = torch.sigmoid(mask_logits(model, batch)) > self.params.threshold
            dice, iou = dice_iou(pred, batch["labels"] > 0.5)
            dices.append(dice)
            ious.append(iou)
        model.train(was_training)
        dice, iou = torch.cat(dices), torch.cat(ious)
        return {"dice": float(dice.mean()), "iou": float(iou.mean()), "n": n}
