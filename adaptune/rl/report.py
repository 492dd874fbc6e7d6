"""What a trained resolution policy is worth: the held-out comparison, its headline numbers, plots and markdown.

What: `evaluate_policy` runs `adaptune.rl.inference.compare_methods` (the trained two-turn loop against always-low,
always-full, resize-all, the oracle and the model before RL) on the held-out rows of `grpo.eval`, and adds the headline
numbers and the VisionThink targets; `report_sections` turns that, the reward / resize-rate / visual-token curves of
`metrics.jsonl` and the rollout token budget into the markdown sections of `report.md`.

Why: a policy is only good relative to its baselines on the same questions and the same judge: accuracy within 95%
of always-full at no more than 60% of its visual tokens, resizing at least three times as often on fine questions as
on coarse ones. The GRPO run (`adaptune.rl.run`) and `adaptune eval RUN_DIR` both report through here, so the two
never disagree on what "policy accuracy" means.

How:

    result = evaluate_policy(model, loaded, plan)       # {"methods": {...}, "headline": {...}, "n": ..., ...}
    sections = report_sections(run_dir, result, parts.budget)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from ..models import LoadedModel
from ..utils.markdown import markdown_table
from ..utils.io import read_jsonl
from .data import heldout_rows
from .inference import compare_methods
from .sections import GRPOPlan


def evaluation_rows(plan: GRPOPlan) -> list[dict[str, Any]]:
    """The held-out rows of `grpo.eval` (its own `dataset` when set, else the training data's source)."""
    if plan.eval.dataset is not None:
        data = dataclasses.replace(plan.data, dataset=plan.eval.dataset)
        return heldout_rows(data, plan.eval.num_images, plan.eval.fine_fraction, plan.eval.split, "grpo.eval.dataset")
    return heldout_rows(plan.data, plan.eval.num_images, plan.eval.fine_fraction, plan.eval.split)


def evaluate_policy(model: Any, loaded: LoadedModel, plan: GRPOPlan) -> dict[str, Any]:
    """`compare_methods` on the held-out rows, plus the headline numbers and the VisionThink targets."""
    judge = plan.eval.judge if plan.eval.judge is not None else plan.reward.get("judge")
    t0 = time.time()
    rows = evaluation_rows(plan)
    result = compare_methods(model, loaded.processor, rows, plan.eval.methods, judge, loaded.family,
                             plan.data.downsample, plan.eval.max_new_tokens or plan.env.turn_tokens,
                             plan.eval.batch_size)
    result["seconds"] = round(time.time() - t0, 1)
    result["headline"] = headline(result["methods"])
    return result


def headline(methods: dict[str, Any]) -> dict[str, Any]:
    """Accuracy and visual tokens per method; policy against full (the VisionThink targets) and against resize_all."""
    out: dict[str, Any] = {}
    for name, cells in methods.items():
        out[f"eval/{name}/accuracy"] = cells["all"]["accuracy"]
        out[f"eval/{name}/visual_tokens"] = cells["all"]["visual_tokens"]
    if "policy" in methods and "full" in methods:
        pol, full = methods["policy"], methods["full"]
        # Ratios without a finite value (a zero denominator) are null, so eval.json stays strict JSON.
        acc_ratio = pol["all"]["accuracy"] / full["all"]["accuracy"] if full["all"]["accuracy"] else None
        tok_ratio = pol["all"]["visual_tokens"] / full["all"]["visual_tokens"]
        fine, coarse = pol.get("fine", {}).get("resize_rate"), pol.get("coarse", {}).get("resize_rate")
        resize_ratio = fine / coarse if fine is not None and coarse else None
        # never resizing on coarse questions while resizing on fine ones meets "3x" whatever the fine rate
        fine_3x = resize_ratio >= 3.0 if resize_ratio is not None else bool(fine) and coarse == 0
        out.update({
            "eval/accuracy_vs_full": acc_ratio, "eval/tokens_vs_full": tok_ratio,
            "eval/resize_rate_fine_over_coarse": resize_ratio,
            "target/accuracy>=95%_of_full": acc_ratio is not None and acc_ratio >= 0.95,
            "target/tokens<=60%_of_full": bool(tok_ratio <= 0.60),
            "target/resize_fine>=3x_coarse": bool(fine_3x),
        })
    if "policy" in methods:  # the image-conditioned decision: resize where the full image is needed, not elsewhere
        pol = methods["policy"]
        for group, key, bound in (("needs full", "needs_full", 0.9), ("low suffices", "low_suffices", 0.2),
                                  ("fine/small digit", "small_digit", 0.9), ("fine/large digit", "large_digit", 0.2)):
            if group in pol:
                rate = pol[group]["resize_rate"]
                out[f"eval/policy/resize_rate/{key}"] = rate
                out[f"target/resize_{key}{'>=' if bound > 0.5 else '<='}{bound:.0%}"] = bool(
                    rate >= bound if bound > 0.5 else rate <= bound)
    if "oracle" in methods and "policy" in methods and methods["oracle"]["all"]["visual_tokens"]:
        out["eval/tokens_vs_oracle"] = (methods["policy"]["all"]["visual_tokens"]
                                        / methods["oracle"]["all"]["visual_tokens"])
    if "policy" in methods and "resize_all" in methods and methods["resize_all"]["all"]["accuracy"]:
        out["eval/accuracy_vs_resize_all"] = (methods["policy"]["all"]["accuracy"]
                                              / methods["resize_all"]["all"]["accuracy"])
    return out


SPLIT_GROUPS = ("needs full", "low suffices", "fine/small digit", "fine/large digit")


def rl_curves(run_dir: Path) -> Path | None:
    """One figure with reward, resize rate and visual tokens per rollout over training steps."""
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "train" and "reward" in r]
    if len(records) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward", ["reward", "rewards/accuracy/mean", "rewards/format/mean"]),
              ("resize rate", ["visionthink/resize_rate", "visionthink/resize_rate_fine",
                               "visionthink/resize_rate_coarse"]),
              ("visual tokens per rollout", ["visionthink/visual_tokens"])]
    fallback = {"visionthink/resize_rate": "env/resize_rate", "visionthink/visual_tokens": "env/visual_tokens",
                "rewards/accuracy/mean": "visionthink/accuracy", "rewards/format/mean": "visionthink/format"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            key = key if any(key in r for r in records) else fallback.get(key, key)
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 20 else None, ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = run_dir / "plots" / "rl_curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_sections(run_dir: Path, evaluation: dict[str, Any], budget: dict[str, int]) -> list[str]:
    """Markdown: the comparison table (overall and per kind), the targets, RL curves, the token budget."""
    sections = []
    methods = evaluation.get("methods", {})
    if methods:
        full_tokens = methods.get("full", {}).get("all", {}).get("visual_tokens")
        full_acc = methods.get("full", {}).get("all", {}).get("accuracy")
        rows = []
        for name, cells in methods.items():
            a = cells["all"]
            row = {"method": name, "accuracy": a["accuracy"], "visual tokens": a["visual_tokens"],
                   "resize rate": a["resize_rate"]}
            if full_tokens:
                row["tokens vs full"] = a["visual_tokens"] / full_tokens
            if full_acc:
                row["accuracy vs full"] = a["accuracy"] / full_acc
            for kind in ("coarse", "fine"):
                if kind in cells:
                    row[f"{kind} acc"] = cells[kind]["accuracy"]
                    row[f"{kind} resize"] = cells[kind]["resize_rate"]
            for group in SPLIT_GROUPS:
                if group in cells:
                    row[f"resize: {group}"] = cells[group]["resize_rate"]
            rows.append(row)
        sections.append(f"## Held-out comparison ({evaluation.get('n')} questions)\n")
        sections.append("policy = the trained two-turn loop; low / full = always that resolution in the first turn "
                        "(direct answer); resize_all = the tool path on every question (low + full image); oracle = "
                        "per question, the cheaper of low and resize_all whose greedy answer is right (resizes only "
                        "where low is wrong and the tool path right); before_rl = the two-turn loop without the "
                        "adapter. Only policy uses the trained adapter: every other row is the base model. "
                        "\"resize: needs full\" / \"low suffices\" split the questions by the oracle's decision; "
                        "\"fine/small digit\" / \"fine/large digit\" are the same digit question on images whose "
                        "digit needs / does not need the full image.\n")
        sections.append(markdown_table(rows))
        detail = [{"method": name, "group": group, **{k: cells[group][k] for k in
                                                       ("n", "accuracy", "visual_tokens", "resize_rate")}}
                  for name, cells in methods.items() for group in cells if "/" in group]
        if detail:
            sections.append("## Per kind, split by whether the question needs the full image\n")
            sections.append(markdown_table(detail))
        targets = {k: v for k, v in evaluation.get("headline", {}).items() if k.startswith("target/")}
        if targets:
            sections.append("## VisionThink targets\n")
            sections.append(markdown_table([{"target": k.split("/", 1)[1], "met": v} for k, v in targets.items()]))
    curves = rl_curves(run_dir)
    if curves is not None:
        sections.append("## Reward, resize rate and visual tokens during GRPO\n")
        sections.append(f"![rl curves](plots/{curves.name})\n")
    sections.append("## Rollout token budget\n")
    sections.append(markdown_table([{"part": k, "tokens": v} for k, v in budget.items()]))
    return sections


__all__ = ["evaluate_policy", "evaluation_rows", "headline", "report_sections", "rl_curves"]
