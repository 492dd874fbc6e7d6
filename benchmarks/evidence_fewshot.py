"""Evidence for R-AMT: few-shot accuracy of the pre-trained tiny CLIP, zero-shot vs mask tuning (with and without
gradient dropout) vs LoRA on the same target modules, same step budget, at 1/2/4/8/16 shots.

    python benchmarks/evidence_fewshot.py [--shots 1 2 4 8 16] [--seeds 0 1 2] [--steps 150] [--split test]
                                          [--lr-mask 3e-3] [--lr-lora 3e-3] [--threads 1] [--cache DIR]

The CLIP comes from `adaptune.pretrain.pretrain_tiny_clip` (cached). Each (method, shots, seed) run starts from the
same frozen CLIP, draws `shots` rows per class with `seed` (nested subsets), trains with Adam + cosine schedule through
`adaptune.train.objectives.training_loss` (the task's loss plus the method's objective, so mask tuning gets the R-AMT
regulariser and gradient dropout exactly as a recipe would), and
reports accuracy on `--split`. Writes benchmarks/results/evidence_fewshot.json and prints a table of means over seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, save  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from adaptune.methods.mask_tuning import (  # noqa: E402
    MaskTuningConfig, default_target_modules, masked_share, plot_masked_share,
)
from adaptune.models import LoadedModel, get_family  # noqa: E402
from adaptune.pretrain import pretrain_tiny_clip  # noqa: E402
from adaptune.tasks.fewshot_clip import FewShotCLIPTask, FewShotParams, clip_logits  # noqa: E402
from adaptune.train.objectives import bind, training_collator, training_loss  # noqa: E402

METHODS = ("mask_tuning+GD", "mask_tuning", "lora")


def make_adapter(method: str, base: torch.nn.Module, args: argparse.Namespace) -> tuple[torch.nn.Module, float]:
    if method == "lora":
        config = LoraConfig(target_modules=default_target_modules(base), r=args.lora_r, lora_alpha=2 * args.lora_r)
        return get_peft_model(base, config), args.lr_lora
    config = MaskTuningConfig(gradient_dropout=method.endswith("+GD"), gradient_dropout_lambda=args.gd_lambda)
    return get_peft_model(base, config), args.lr_mask


@torch.no_grad()
def accuracy(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, text: torch.Tensor) -> float:
    model.eval()
    predictions = torch.cat([clip_logits(model, pixels[i:i + 256], text).argmax(-1)
                             for i in range(0, len(labels), 256)])
    return float((predictions == labels).float().mean())


def train(task: FewShotCLIPTask, model: torch.nn.Module, lr: float, steps: int, batch_size: int, seed: int) -> None:
    rows = task.datasets()["train"]
    rows = [rows[i] for i in range(len(rows))]
    n = len(rows)
    batch_size = min(batch_size, n)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    objective = bind(model, task)  # the adapter method's objective (None for LoRA)
    collate = training_collator(task.collate, objective)
    order, cursor = torch.randperm(n, generator=generator), 0
    model.train()
    for _ in range(steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        batch = collate([rows[i] for i in idx.tolist()])  # augmented views
        loss, _ = training_loss(model, task, batch, objective)  # CE, plus R-AMT's objective for mask tuning
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr-mask", type=float, default=1e-4)
    parser.add_argument("--lr-lora", type=float, default=3e-3)
    parser.add_argument("--lora-r", type=int, default=4)
    parser.add_argument("--gd-lambda", type=float, default=1.0)
    parser.add_argument("--no-augment", action="store_true", help="train on the raw k-shot images")
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--clip-steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--name", default="evidence_fewshot")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clip = pretrain_tiny_clip(steps=args.clip_steps, cache_dir=args.cache)
    print(f"tiny CLIP: {clip.path} {clip.metrics}")
    spec = get_family("clip")

    def fresh_model() -> torch.nn.Module:
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(clip.path).eval()

    probe = FewShotCLIPTask(FewShotParams(shots=1), LoadedModel(fresh_model(), clip.processor, spec, "pretrained"))
    eval_rows = probe.datasets()[args.split]
    eval_data = probe.encode([eval_rows[i] for i in range(len(eval_rows))])
    text = probe.text_embeds(probe.loaded.model)
    zero_shot = accuracy(probe.loaded.model, eval_data["pixel_values"], eval_data["labels"], text)
    print(f"zero-shot accuracy on {args.split} ({len(eval_rows)} images, 12 classes): {zero_shot:.4f}")

    runs = []
    for shots in args.shots:
        for method in args.methods:
            for seed in args.seeds:
                torch.manual_seed(seed)
                base = fresh_model()
                task = FewShotCLIPTask(FewShotParams(shots=shots, augment=not args.no_augment),
                                       LoadedModel(base, clip.processor, spec, "p"), seed=seed)
                task._text_embeds = text
                model, lr = make_adapter(method, base, args)
                t0 = time.time()
                train(task, model, lr, args.steps, args.batch_size, seed)
                acc = accuracy(model, eval_data["pixel_values"], eval_data["labels"], text)
                share = masked_share(model)
                run = {"method": method, "shots": shots, "seed": seed, "accuracy": round(acc, 4),
                       "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                       "masked_share": round(share[-1]["share"], 5) if share else None,
                       "seconds": round(time.time() - t0, 1)}
                runs.append(run)
                print(run, flush=True)
                if share and shots == max(args.shots) and seed == args.seeds[0] and method == args.methods[0]:
                    plot = RESULTS / f"{args.name}_masked_share_{shots}shot.png"
                    plot_masked_share(share, plot, title=f"{method}, {shots} shots: masked weights per layer")
                    print(f"wrote {plot}")

    table = {}
    for method in args.methods:
        table[method] = {}
        for shots in args.shots:
            accs = [r["accuracy"] for r in runs if r["method"] == method and r["shots"] == shots]
            table[method][shots] = {"mean": round(statistics.mean(accs), 4),
                                    "std": round(statistics.pstdev(accs), 4) if len(accs) > 1 else 0.0}
    header = "method".ljust(16) + "".join(f"{k:>14}" for k in args.shots)
    print(f"\n## Few-shot accuracy on {args.split} (mean ± std over seeds {args.seeds}, {args.steps} steps)")
    print(header)
    print("zero-shot".ljust(16) + "".join(f"{zero_shot:>14.4f}" for _ in args.shots))
    for method, cells in table.items():
        print(method.ljust(16) + "".join(f"{cells[k]['mean']:>8.4f}±{cells[k]['std']:.3f}" for k in args.shots))
    save(args.name, {"settings": vars(args), "clip": {"path": str(clip.path), **clip.metrics},
                     "zero_shot": zero_shot, "table": table, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
