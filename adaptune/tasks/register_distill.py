"""`register_distill`: the images PH-Reg self-distils on, and its evaluation.

What: the task provides unlabeled images (capability IMAGES) and has no loss of its own (it needs LOSS from the
method): the `registers` method's objective (`adaptune.methods.registers.objective`) trains the student (the ViT with
the `registers` adapter) to reproduce the frozen teacher's denoised patch features: the same model with the adapter
disabled, averaged over K shifted/flipped views, loss = (1 - cosine) + mse_weight * MSE on patch tokens. The view and
loss settings are the adapter's (`RegistersConfig.num_views`, `max_shift`, `flip`, `candidates`, `fill`,
`mse_weight`, `view_seed`); a recipe that still sets them under `task.params` is refused with a message saying to put
them in `adapter.params`, and so is this task with another adapter method. Any image source works: GlyphQA images
(default), `synthetic` random-block images, a saved `datasets` folder with an image column, or a folder of image files.
`cache_dir` keeps the denoised targets on disk (filled before training), shared with the objective as `target_cache`.

Why: registers absorb the artifact tokens of a pre-trained ViT without retraining it; only the registers, the position
and patch embeddings and the last block the model reads train (the ViT's last; on LLaVA the block of
`vision_feature_layer`, whose hidden state is also the distillation target).

    task: {name: register_distill, params: {dataset: glyphqa, cache_dir: runs/x/targets}}
    adapter: {method: registers, params: {num_registers: 16, num_views: 10}}

Evaluation: cosine-to-denoised-target percentiles for the student (`cos/p50`, ...) and the base model (`base_cos/...`),
and the share of patch tokens with outlier norms for both; the report gets a per-patch feature-norm picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..methods.objective import active_method
from ..methods.registers import RegistersConfig
from ..methods.registers import diagnostics as diag
from ..methods.registers.distill import Distiller, TargetCache, patch_features, teacher_context
from ..registry import TASKS
from .base import IMAGES, LOSS, Task, TaskLoss, model_device

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
    cache_dir: str | None = None
    """Folder for cached denoised targets (valid for one base model; the views are part of the key); None computes
    them every step."""
    outlier_k: float = 3.0
    """A patch norm above Q3 + k * IQR counts as an outlier."""
    eval_batch_size: int = 16


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
    description = "PH-Reg: images for the registers' self-distillation towards denoised multi-view features"
    provides = frozenset({IMAGES})
    needs = frozenset({LOSS})
    moved_to_adapter = ("num_views", "max_shift", "flip", "candidates", "fill", "mse_weight", "view_seed")

    def __init__(self, params: RegisterDistillParams, loaded: Any, seed: int = 0) -> None:
        super().__init__(params, loaded, seed)
        self.family = loaded.family.name
        self.target_cache = TargetCache(params.cache_dir, namespace=str(loaded.source)) if params.cache_dir else None
        """Denoised targets on disk; the registers objective reads the same cache."""
        self._distillers: dict[int, Distiller] = {}

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

    def distiller(self, model: torch.nn.Module) -> Distiller:
        """The teacher of the `registers` adapter on `model`, with its config's view settings and this task's cache."""
        found = active_method(model)
        config = found[1] if found else None
        if not isinstance(config, RegistersConfig):
            raise ValueError("register_distill: the model has no active `registers` adapter (the distillation "
                             "settings and the loss are that method's)")
        if id(config) not in self._distillers:
            self._distillers[id(config)] = Distiller(config, self.family, self.target_cache)
        return self._distillers[id(config)]

    def targets(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.distiller(model).targets(model, pixel_values)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> TaskLoss:
        """No loss of its own: the images, for the registers objective's distillation."""
        return TaskLoss(None, images=batch["pixel_values"])

    def on_train_begin(self, model: torch.nn.Module) -> None:
        """Fill the target cache before training, so each step costs one student forward."""
        if self.target_cache is None:
            return
        rows = self.datasets()["train"]
        for start in range(0, len(rows), self.params.eval_batch_size):
            pixels = self.collate(rows[start:start + self.params.eval_batch_size])["pixel_values"]
            self.targets(model, pixels.to(model_device(model)))

    @torch.no_grad()
    def _features(self, model: torch.nn.Module, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {"student": [], "base": [], "target": []}
        was_training = model.training
        model.eval()
        for start in range(0, len(rows), self.params.eval_batch_size):
            pixels = self.collate(rows[start:start + self.params.eval_batch_size])["pixel_values"]
            pixels = pixels.to(model_device(model))
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
