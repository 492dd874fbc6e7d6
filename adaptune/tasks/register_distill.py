"""`register_distill`: PH-Reg self-distillation on unlabeled images.

What: the student (the ViT with the `registers` adapter) learns to reproduce the frozen teacher's denoised patch
features: the same model with the adapter disabled, averaged over K shifted/flipped views (`methods/registers/
distill.py`). Loss = (1 - cosine) + mse_weight * MSE on patch tokens. Any image source works: GlyphQA images
(default), `synthetic` random-block images, a saved `datasets` folder with an image column, or a folder of image files.

Why: registers absorb the artifact tokens of a pre-trained ViT without retraining it; only the registers, the position
and patch embeddings and the last block train.

    task: {name: register_distill, params: {dataset: glyphqa, num_views: 10, cache_dir: runs/x/targets}}
    adapter: {method: registers, params: {num_registers: 16}}

Evaluation: cosine-to-denoised-target percentiles for the student (`cos/p50`, ...) and the base model (`base_cos/...`),
and the share of patch tokens with outlier norms for both; the report gets a per-patch feature-norm picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..methods.registers import diagnostics as diag
from ..methods.registers.distill import (
    TargetCache,
    View,
    denoised_target,
    distill_loss,
    fps_views,
    patch_features,
    patch_size_of,
    teacher_context,
)
from ..registry import TASKS
from .base import Task

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class RegisterDistillParams:
    dataset: str = "glyphqa"
    """"glyphqa", "synthetic", a `datasets` folder saved with save_to_disk, or a folder of image files."""
    image_column: str = "image"
    num_train: int = 256
    num_eval: int = 32
    synthetic_size: int = 64
    """Side of the "synthetic" images in pixels."""
    num_views: int = 10
    max_shift: float = 0.15
    """Largest view shift as a fraction of the patch-grid side (whole patches)."""
    flip: bool = True
    candidates: int = 100
    """Random view candidates the farthest-point sampling picks from."""
    fill: float = 0.0
    """Value of out-of-image pixels after normalisation (0 = the mean colour)."""
    mse_weight: float = 1.0
    view_seed: int = 0
    cache_dir: str | None = None
    """Folder for cached denoised targets (valid for one base model); None computes them every step."""
    outlier_k: float = 3.0
    """A patch norm above Q3 + k * IQR counts as an outlier."""
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")
        if not 0 <= self.max_shift < 1:
            raise ValueError(f"max_shift must be a fraction in [0, 1), got {self.max_shift}")


def load_images(params: RegisterDistillParams, split: str, n: int, seed: int) -> list[Image.Image]:
    """`n` RGB images of `split` from the configured source."""
    if n <= 0:
        return []
    if params.dataset == "synthetic":
        from ..models.inputs import example_images

        offset = {"train": 0, "validation": 1, "test": 2}.get(split, 3)
        return example_images(n, params.synthetic_size, seed=seed * 10 + offset)
    if params.dataset == "glyphqa":
        from ..data.glyphqa import GlyphQAConfig, build_split

        rows = build_split(GlyphQAConfig(seed=seed), split, num_images=n)
        return [rows[i][params.image_column].convert("RGB") for i in range(len(rows))]
    path = Path(params.dataset)
    if path.is_dir() and not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no image files ({', '.join(_IMAGE_SUFFIXES)})")
        start = {"train": 0, "validation": params.num_train, "test": params.num_train + params.num_eval}.get(split, 0)
        return [Image.open(p).convert("RGB") for p in files[start:start + n]]
    import datasets as hf_datasets

    data = hf_datasets.load_from_disk(str(path))
    if isinstance(data, hf_datasets.DatasetDict):
        if split not in data:
            return []
        data = data[split]
    if params.image_column not in data.column_names:
        raise ValueError(f"{path}: no column {params.image_column!r} (has {data.column_names})")
    return [data[i][params.image_column].convert("RGB") for i in range(min(n, len(data)))]


@TASKS.register("register_distill")
class RegisterDistillTask(Task):
    Params = RegisterDistillParams
    description = "PH-Reg: distil a ViT with registers towards its own denoised multi-view features"

    def __init__(self, params: RegisterDistillParams, loaded: Any, seed: int = 0) -> None:
        super().__init__(params, loaded, seed)
        self.family = loaded.family.name
        self._views: list[View] | None = None
        self._cache = TargetCache(params.cache_dir, namespace=str(loaded.source)) if params.cache_dir else None

    def build_datasets(self) -> dict[str, Any]:
        p = self.params
        out: dict[str, Any] = {"train": [{"image": im} for im in load_images(p, "train", p.num_train, self.seed)]}
        validation = load_images(p, "validation", p.num_eval, self.seed)
        if validation:
            out["validation"] = [{"image": im} for im in validation]
        return out

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        image_processor = getattr(self.processor, "image_processor", self.processor)
        pixels = image_processor(images=[r["image"] for r in rows], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels}

    def views(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> list[View]:
        if self._views is None:
            patch = patch_size_of(model, self.family)
            grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
            p = self.params
            self._views = fps_views(grid, p.num_views, p.max_shift, p.flip, p.candidates, p.view_seed)
        return self._views

    def targets(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        views = self.views(model, pixel_values)
        if self._cache is not None:
            return self._cache.targets(model, self.family, pixel_values, views, self.params.fill)
        return denoised_target(model, self.family, pixel_values, views, self.params.fill)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        pixels = batch["pixel_values"]
        target = self.targets(model, pixels)
        return distill_loss(patch_features(model, self.family, pixels), target, self.params.mse_weight)

    def on_train_begin(self, model: torch.nn.Module) -> None:
        """Fill the target cache before training, so each step costs one student forward."""
        if self._cache is None:
            return
        rows = self.datasets()["train"]
        for start in range(0, len(rows), self.params.eval_batch_size):
            self.targets(model, self.collate(rows[start:start + self.params.eval_batch_size])["pixel_values"])

    @torch.no_grad()
    def _features(self, model: torch.nn.Module, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {"student": [], "base": [], "target": []}
        was_training = model.training
        model.eval()
        for start in range(0, len(rows), self.params.eval_batch_size):
            pixels = self.collate(rows[start:start + self.params.eval_batch_size])["pixel_values"]
            parts["target"].append(self.targets(model, pixels))
            parts["student"].append(patch_features(model, self.family, pixels))
            with teacher_context(model):
                parts["base"].append(patch_features(model, self.family, pixels))
        model.train(was_training)
        return {k: torch.cat(v) for k, v in parts.items()}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "validation", limit: int | None = None) -> dict[str, Any]:
        rows = self.datasets().get(split, [])[: limit or None]
        if not rows:
            return {}
        feats = self._features(model, rows)
        metrics: dict[str, Any] = {"n": len(rows)}
        for name, key in (("cos", "student"), ("base_cos", "base")):
            cos = diag.cosine_to_target(feats[key], feats["target"])
            metrics.update({f"{name}/{q}": v for q, v in diag.percentiles(cos).items()})
        metrics["outlier_share"] = diag.outlier_share(feats["student"], self.params.outlier_k)
        metrics["base_outlier_share"] = diag.outlier_share(feats["base"], self.params.outlier_k)
        return metrics

    def report_sections(self, model: torch.nn.Module, run_dir: Path) -> list[str]:
        """A feature-norm-per-patch picture (base vs registers) for a few validation images."""
        split = "validation" if "validation" in self.datasets() else "train"
        feats = self._features(model, self.datasets()[split][:4])
        path = diag.save_norm_figure({"base": diag.norm_maps(feats["base"]),
                                      "registers": diag.norm_maps(feats["student"])},
                                     Path(run_dir) / "plots" / "register_norms.png")
        return ["## Patch feature norms (base vs registers)\n", f"![patch norms](plots/{path.name})\n"]
