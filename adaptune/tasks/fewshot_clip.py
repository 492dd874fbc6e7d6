"""`fewshot_clip`: k-shot image classification with a CLIP model and a zero-shot head built from text prompts.

What: class prompts ("a photo of a red circle.") are encoded once by the frozen text tower; logits are
logit_scale * cos(image embedding, prompt embedding); the loss is cross-entropy. The task hands its logits and a way to
recompute them to the trainer (`TaskLoss`, capability LOGITS), so a method's objective can use them: with a
mask-tuning adapter that is R-AMT's score regulariser and gradient dropout against the frozen zero-shot logits
(`adaptune.methods.mask_tuning.gradient_dropout`), applied by the trainer, not here. Evaluation reports accuracy
(and, for mask tuning, the share of masked weights).
Data: the few-shot colour-shape set (`adaptune.data.companions`): `shots` in {1, 2, 4, 8, 16} rows per class drawn from
the train pool (nested across shots for one seed), validation and test splits.
How:
    task: {name: fewshot_clip, params: {shots: 16}}
    python -m adaptune.pretrain     # the pre-trained tiny CLIP to use as `model.source` (zero-shot well above chance)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..registry import TASKS
from .base import LOGITS, Task, TaskLoss, model_device, on_device


def image_embeddings(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    out = model.get_image_features(pixel_values=pixel_values.to(model_device(model)))
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return F.normalize(features, dim=-1)


@torch.no_grad()
def prompt_embeddings(model: torch.nn.Module, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Normalised text embeddings of `prompts` (one row per class)."""
    tokens = on_device(dict(tokenizer(prompts, padding=True, return_tensors="pt")), model)
    out = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return F.normalize(features, dim=-1)


def clip_logits(model: torch.nn.Module, pixel_values: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """logit_scale * cosine similarity between the images and every class prompt: (B, num_classes)."""
    scale = model.logit_scale.exp() if hasattr(model, "logit_scale") else torch.tensor(100.0)
    images = image_embeddings(model, pixel_values)
    return scale.to(images.device) * images @ text_embeds.to(images.device).T


def random_resized_crop_flip(image: Image.Image, rng: np.random.Generator, scale: tuple[float, float] = (0.5, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """CoOp / R-AMT style augmentation: a random crop of `scale` of the area, resized back, flipped with p = 1/2."""
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            image = image.crop((x0, y0, x0 + w, y0 + h)).resize((width, height), Image.BILINEAR)
            break
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


@dataclass
class FewShotParams:
    shots: int = 16
    """Training rows per class (1, 2, 4, 8 or 16 with the default pool of 32 per class)."""
    data_seed: int = 0
    image_size: int = 64
    validation_per_class: int = 10
    test_per_class: int = 50
    prompt_template: str = "a photo of a {}."
    augment: bool = True
    """Random resized crop (50-100% of the area) and horizontal flip of training images (as in CoOp / R-AMT)."""
    eval_batch_size: int = 128


@TASKS.register("fewshot_clip")
class FewShotCLIPTask(Task):
    Params = FewShotParams
    description = "CLIP few-shot classification with a zero-shot text head (cross-entropy on the class logits)"
    families = ("clip",)
    provides = frozenset({LOGITS})

    def __init__(self, params: Any, loaded: Any, seed: int = 0) -> None:
        super().__init__(params, loaded, seed)
        self._text_embeds: torch.Tensor | None = None
        self._augment_rng = np.random.default_rng(seed)

    def data_config(self) -> Any:
        from ..data.companions import FewShotConfig

        p = self.params
        return FewShotConfig(seed=p.data_seed, image_size=p.image_size, validation_per_class=p.validation_per_class,
                             test_per_class=p.test_per_class, prompt_template=p.prompt_template)

    def prompts(self) -> list[str]:
        from ..data.companions import class_prompts

        return class_prompts(self.data_config())

    def build_datasets(self) -> dict[str, Any]:
        from ..data.companions import generate_fewshot, sample_k_shot

        data = generate_fewshot(self.data_config())
        out = {"train": sample_k_shot(data["train"], self.params.shots, seed=self.seed)}
        out.update({split: data[split] for split in ("validation", "test") if split in data})
        return out

    def text_embeds(self, model: torch.nn.Module) -> torch.Tensor:
        """Class-prompt embeddings, encoded once (the adapters of this task leave the text tower frozen)."""
        if self._text_embeds is None:
            self._text_embeds = prompt_embeddings(model, self.processor.tokenizer, self.prompts())
        return self._text_embeds

    def on_train_begin(self, model: torch.nn.Module) -> None:
        self.text_embeds(model)

    def encode(self, rows: list[dict[str, Any]], augment: bool = False) -> dict[str, Any]:
        """Pixel values and labels of `rows` (augmented training views when `augment`)."""
        images = [r["image"].convert("RGB") for r in rows]
        if augment:
            images = [random_resized_crop_flip(im, self._augment_rng) for im in images]
        pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.tensor([int(r["label"]) for r in rows])}

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Training batches (the trainer's data collator): augmented when `params.augment`."""
        return self.encode(rows, augment=self.params.augment)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> TaskLoss:
        text = self.text_embeds(model)
        pixels = batch["pixel_values"]
        logits = clip_logits(model, pixels, text)
        accuracy = float((logits.argmax(-1) == batch["labels"]).float().mean())
        return TaskLoss(F.cross_entropy(logits, batch["labels"]), {"train_accuracy": accuracy}, logits=logits,
                        reference=lambda: clip_logits(model, pixels, text))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "validation", limit: int | None = None) -> dict[str, Any]:
        from ..methods.mask_tuning import masked_share

        rows = self.datasets()[split]
        n = len(rows) if limit is None else min(limit, len(rows))
        was_training = model.training
        model.eval()
        text = self.text_embeds(model)
        correct = 0
        for start in range(0, n, self.params.eval_batch_size):
            batch = self.encode([rows[i] for i in range(start, min(n, start + self.params.eval_batch_size))])
            predicted = clip_logits(model, batch["pixel_values"], text).argmax(-1).cpu()
            correct += int((predicted == batch["labels"].cpu()).sum())
        model.train(was_training)
        metrics: dict[str, Any] = {"accuracy": correct / max(n, 1), "n": n}
        share = masked_share(model)
        if share:
            metrics["masked_share"] = share[-1]["share"]
        return metrics

    def report_sections(self, model: torch.nn.Module, run_dir: Path) -> list[str]:
        from ..methods.mask_tuning import masked_share, plot_masked_share
        from ..utils.markdown import markdown_table

        rows = masked_share(model)
        if not rows:
            return []
        plot_masked_share(rows, Path(run_dir) / "plots" / "masked_share.png")
        table = markdown_table([{**r, "share": round(100 * r["share"], 3)} for r in rows],
                               ["module", "zeroed", "total", "share"])
        return ["## Masked weights (% zeroed per layer)\n", table, "![masked share](plots/masked_share.png)\n"]
