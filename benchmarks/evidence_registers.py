"""PH-Reg evidence on a TRAINED encoder: the pre-trained tiny CLIP vision tower, before vs after register distillation.

Measures, on held-out images (GlyphQA validation + the few-shot colour-shape test images the CLIP was trained on):
- cosine between the patch features and the denoised K-view teacher target (p5/p25/p50/p75/p95, mean),
- share of patch tokens with an outlier norm (> Q3 + 3 IQR),
- a per-patch norm picture (base vs registers) -> docs/img/registers_norms_<set>.png,
- trainable parameters, and CLIP zero-shot accuracy (few-shot test split, 600 rows) before and after.

    ADAPTUNE_CACHE=/tmp/adaptune_cache .venv/bin/python benchmarks/evidence_registers.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def load_clip(cache_dir: str | None):
    from adaptune import pretrain

    return pretrain.pretrain_tiny_clip(steps=pretrain.DEFAULT_CLIP_STEPS, seed=0, cache_dir=cache_dir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--num-train", type=int, default=256)
    ap.add_argument("--num-eval", type=int, default=64)
    ap.add_argument("--num-views", type=int, default=10)
    ap.add_argument("--num-registers", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="seed of the register init and batch order")
    ap.add_argument("--cls-weight", type=float, default=0.0,
                    help="extra term (not in PH-Reg): cls_weight * (1 - cos) between the student's pooled [CLS] "
                         "output and the frozen model's, to keep CLIP's image embedding (zero-shot) in place")
    ap.add_argument("--unlock", default="position_embeddings,patch_embedding,last_block")
    ap.add_argument("--dataset", default="glyphqa", help="training images: glyphqa | fewshot")
    ap.add_argument("--cache-dir", default=os.environ.get("ADAPTUNE_CACHE_DIR", "/tmp/adaptune_cache"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evidence_registers.json"))
    ap.add_argument("--img-dir", default=str(ROOT / "docs" / "img"))
    args = ap.parse_args()

    import adaptune  # noqa: F401  (registers the PEFT methods)
    from peft import get_peft_model

    from adaptune.methods.registers import RegistersConfig
    from adaptune.methods.registers import diagnostics as diag
    from adaptune.methods.registers.distill import (
        denoised_target, distill_loss, fps_views, patch_features, teacher_context,
    )
    from adaptune.pretrain.clip import pixel_values_of, zero_shot_accuracy
    from adaptune.tasks.register_distill import RegisterDistillParams, load_images

    t0 = time.time()
    pre = load_clip(args.cache_dir)
    clip, processor = pre.model, pre.processor
    print(f"tiny CLIP from {pre.path} (cached metrics {pre.metrics})", flush=True)
    family = "clip"
    zs_before = zero_shot_accuracy(clip, processor)
    print(f"zero-shot before: {zs_before:.4f}", flush=True)

    # ---- images
    def glyph(split: str, n: int):
        return load_images(RegisterDistillParams(dataset="glyphqa"), split, n, seed=0)

    def fewshot(split: str, n: int):
        from adaptune.data.companions import FewShotConfig, build_fewshot_split

        rows = build_fewshot_split(FewShotConfig(seed=0), split)
        return [rows[i]["image"].convert("RGB") for i in range(min(n, len(rows)))]

    train_images = glyph("train", args.num_train) if args.dataset == "glyphqa" else fewshot("train", args.num_train)
    eval_sets = {"glyphqa_val": glyph("validation", args.num_eval), "fewshot_test": fewshot("test", args.num_eval)}
    train_px = pixel_values_of(processor, train_images)
    eval_px = {k: pixel_values_of(processor, v) for k, v in eval_sets.items()}
    grid = train_px.shape[-1] // clip.config.vision_config.patch_size
    views = fps_views((grid, grid), args.num_views, 0.15, True, 100, 0)
    print(f"image {train_px.shape[-1]} px, grid {grid}x{grid}, views {views}", flush=True)

    total_before = sum(p.numel() for p in clip.parameters())
    vision_params = sum(p.numel() for p in clip.vision_model.parameters())
    torch.manual_seed(args.seed)
    model = get_peft_model(clip, RegistersConfig(num_registers=args.num_registers,
                                                      unlock=[u for u in args.unlock.split(",") if u]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"trainable {trainable} / vision tower {vision_params} / whole CLIP {total_before}", flush=True)

    # ---- targets (teacher = adapter disabled); fixed for the frozen teacher, so compute once
    def targets(px):
        return torch.cat([denoised_target(model, family, px[i:i + 64], views) for i in range(0, len(px), 64)])

    train_tgt = targets(train_px)
    eval_tgt = {k: targets(v) for k, v in eval_px.items()}

    @torch.no_grad()
    def measure(tag: str) -> dict:
        model.eval()
        out = {}
        for name, px in eval_px.items():
            with teacher_context(model):
                base = patch_features(model, family, px)
            stud = patch_features(model, family, px)
            out[name] = {
                "base_cos": diag.percentiles(diag.cosine_to_target(base, eval_tgt[name]), (5, 25, 50, 75, 95)),
                "student_cos": diag.percentiles(diag.cosine_to_target(stud, eval_tgt[name]), (5, 25, 50, 75, 95)),
                "base_outlier_share": diag.outlier_share(base), "student_outlier_share": diag.outlier_share(stud),
                "base_norm": {"mean": float(base.norm(dim=-1).mean()), "max": float(base.norm(dim=-1).max())},
                "student_norm": {"mean": float(stud.norm(dim=-1).mean()), "max": float(stud.norm(dim=-1).max())},
            }
            if tag == "after":
                path = diag.save_norm_figure({"base": diag.norm_maps(base[:4]), "registers": diag.norm_maps(stud[:4])},
                                             Path(args.img_dir) / f"registers_norms_{name}.png")
                out[name]["figure"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        model.train()
        return out

    zs_fresh = zero_shot_accuracy(model, processor)  # untrained registers inserted
    print(f"zero-shot with fresh (untrained) registers: {zs_fresh:.4f}", flush=True)
    train_cls = None
    if args.cls_weight > 0:
        with torch.no_grad(), teacher_context(model):
            model.eval()
            train_cls = torch.cat([model.base_model.model.vision_model(pixel_values=train_px[i:i + 64]).pooler_output
                                   for i in range(0, len(train_px), 64)])
            model.train()

    before = measure("before")  # student with fresh registers (not yet trained) == base + random registers
    print("before:", json.dumps(before, indent=1)[:1500], flush=True)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.steps), eta_min=5e-6)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    t_train = time.time()
    log = []
    for step in range(args.steps):
        idx = torch.randint(0, len(train_px), (args.batch_size,), generator=g)
        if train_cls is None:
            loss, parts = distill_loss(patch_features(model, family, train_px[idx]), train_tgt[idx])
        else:
            vision = model.base_model.model.vision_model
            out = vision(pixel_values=train_px[idx])
            tokens = out.last_hidden_state[:, -grid * grid:].reshape(len(idx), grid, grid, -1)
            loss, parts = distill_loss(tokens, train_tgt[idx])
            cls_cos = torch.nn.functional.cosine_similarity(out.pooler_output, train_cls[idx], dim=-1).mean()
            loss = loss + args.cls_weight * (1 - cls_cos)
            parts["cls_cosine"] = float(cls_cos.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": float(loss.detach()), **parts})
            print(log[-1], flush=True)
    train_s = time.time() - t_train

    after = measure("after")
    model.eval()
    zs_after = zero_shot_accuracy(model, processor)  # whole CLIP forward goes through the adapted vision tower
    with model.disable_adapter():
        zs_disabled = zero_shot_accuracy(model, processor)
    result = {
        "model": str(pre.path), "cached_pretrain_metrics": pre.metrics, "image_px": int(train_px.shape[-1]),
        "grid": grid, "num_registers": args.num_registers, "num_views": args.num_views, "steps": args.steps,
        "batch_size": args.batch_size, "lr": args.lr, "train_images": f"{args.dataset} train x{args.num_train}",
        "eval_images": {k: len(v) for k, v in eval_px.items()},
        "trainable_params": trainable, "vision_tower_params": vision_params, "clip_params": total_before,
        "zero_shot_before": zs_before, "zero_shot_fresh_registers": zs_fresh,
        "cls_weight": args.cls_weight, "seed": args.seed, "unlock": args.unlock,
        "zero_shot_after": zs_after, "zero_shot_adapter_disabled": zs_disabled,
        "before_training": before, "after_training": after, "train_log": log,
        "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("before_training", "train_log")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
