"""`make demo` / `adaptune demo`: the embedded default VLM on held-out GlyphQA, at half, full and its own resolution.

First (well within a minute) the shipped trained resolution policy (`adaptune.default.load_default_policy`: the LoRA
adapter the VisionThink GRPO recipe trained, checksum verified) against always-low, always-full and the per-question
oracle, on held-out questions where the same digit question needs the full image on some images (small digit) and
not on others (large digit): its resize rate on each is the image-conditioned decision. Then it loads the shipped
default (`load_model("default")`, checksum verified), asks held-out GlyphQA questions (fine = the small digit,
coarse = counts, colours, shapes, positions) with the image at half resolution (4 visual tokens), at full resolution
(16), and with the model's own choice: it sees the half image first and may call `resize_image`, in which
case the full image comes back in a tool turn (20 tokens in all). Writes `report.md` with the accuracy table, visual
tokens per answer, resize rate per kind, example images at both resolutions and the training curves of the build.
About 2-4 minutes on 2 CPU cores.

    adaptune demo --out runs/demo
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from adaptune.budget.resolution import downsample
from adaptune.data import GlyphQAConfig
from adaptune.eval.calibration import calibration
from adaptune.default import DefaultModelError, load_default_policy, verify_assets
from adaptune.default.evaluate import answer_fixed, cell_summary, heldout_items, two_turn
from adaptune.models import load_model
from adaptune.rl.inference import compare_methods
from adaptune.train.report import plot_curves
from adaptune.utils.markdown import markdown_table
from adaptune.utils.io import atomic_write_json, atomic_write_text


def _example_image(item: dict[str, Any], path: Path) -> None:
    """Full (128 px) and half (64 px, shown enlarged 2x with NEAREST) side by side."""
    full = item["image"]
    half = downsample(full).resize(full.size, Image.NEAREST)
    canvas = Image.new("RGB", (full.width * 2 + 8, full.height), "white")
    canvas.paste(full, (0, 0))
    canvas.paste(half, (full.width + 8, 0))
    canvas.resize((canvas.width * 2, canvas.height * 2), Image.NEAREST).save(path)


def _curve_records(curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Build-time curves on one global step axis, one loss line per stage."""
    out, offset, last = [], 0, {}
    for rec in curves:
        stage = rec["stage"]
        if stage not in last:
            offset = max(last.values(), default=-1) + 1
        last[stage] = offset + rec["step"]
        row = {"step": offset + rec["step"], f"loss/{stage}": rec["loss"]}
        if "digit_full" in rec:
            row["stage1_digit_read/full"] = rec["digit_full"]
            row["stage1_digit_read/half"] = rec["digit_half"]
        out.append(row)
    return out


POLICY_METHODS = ("policy", "low", "full", "oracle")
POLICY_COLUMNS = ("fine/small digit", "fine/large digit", "coarse", "needs full", "low suffices")


def policy_comparison(num_images: int = 80, seed: int = 0, max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """The shipped policy against always-low, always-full and the oracle on `num_images` held-out questions (half
    fine, half of the images with a large digit); one table row per method (accuracy, visual tokens, resize rates)."""
    from adaptune.data import build_split

    loaded = load_default_policy()
    cfg = GlyphQAConfig(seed=seed, large_digit_fraction=0.5)
    rows = [{"image": r["image"].convert("RGB"), **{k: r[k] for k in ("question", "answer", "kind", "digit_size")}}
            for r in build_split(cfg, "test", num_images=num_images, fine_fraction=0.5)]
    result = compare_methods(loaded.model, loaded.processor, rows, POLICY_METHODS, family=loaded.family,
                             max_new_tokens=max_new_tokens)
    table = []
    for name, cells in result["methods"].items():
        row = {"method": name, "accuracy": cells["all"]["accuracy"], "visual tokens": cells["all"]["visual_tokens"]}
        row.update({f"resize: {g} (n={cells[g]['n']})": cells[g]["resize_rate"] for g in POLICY_COLUMNS if g in cells})
        table.append(row)
    return table


def run_demo(out: str = "runs/demo", per_kind: int = 75, seed: int = 0, threads: int = 1) -> Path:
    """Evaluate the shipped default and write `out/report.md`; returns the report path.

    One torch thread by default: on a shared 2-core machine two OpenMP threads were several times slower.
    """
    torch.set_num_threads(threads)
    out_dir = Path(out)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    info = verify_assets()
    start = time.time()
    try:
        policy_rows = policy_comparison(seed=seed)
        policy_note = f"{len(policy_rows)} methods in {time.time() - start:.0f} s"
        print(markdown_table(policy_rows, list(policy_rows[0])), flush=True)
    except DefaultModelError as exc:  # no (or a modified) shipped policy: say so, show the rest
        policy_rows, policy_note = [], f"not shown: {exc}"
        print(f"trained policy {policy_note}", flush=True)
    loaded = load_model("default")
    model, processor = loaded.model, loaded.processor
    items = heldout_items(per_kind=per_kind, seed=seed)
    start = time.time()
    results = {res: answer_fixed(model, processor, items, res) for res in ("half", "full")}
    results["auto (greedy)"] = two_turn(model, processor, items)
    results["auto (sampled, T=0.6)"] = two_turn(model, processor, items, do_sample=True, temperature=0.6, seed=seed)
    results["auto (sampled, T=1)"] = two_turn(model, processor, items, do_sample=True, seed=seed)
    seconds = time.time() - start
    summaries = {name: cell_summary(rs) for name, rs in results.items()}

    rows = []
    for name, s in summaries.items():
        rows.append({"resolution": name, "fine (digit)": s["fine"]["accuracy"], "coarse": s["coarse"]["accuracy"],
                     "all": s["all"]["accuracy"], "visual tokens / answer": s["all"]["visual_tokens"],
                     **({"resize rate fine": s["fine"]["resize_rate"], "resize rate coarse": s["coarse"]["resize_rate"],
                         "well-formed": s["all"]["well_formed"]} if name.startswith("auto") else {})})
    _example_image(items[0], out_dir / "example_fine.png")
    _example_image(items[per_kind], out_dir / "example_coarse.png")
    calibration(GlyphQAConfig(num_images=1, num_validation=0, num_test=0), path=out_dir / "calibration.png")
    plots = plot_curves(_curve_records(info.get("curves", [])), out_dir / "plots")
    examples = [r for r in results["auto (sampled, T=0.6)"] if r["resized"]][:2] + \
               [r for r in results["auto (sampled, T=0.6)"] if not r["resized"]][:2]

    parts = [
        "# adaptune demo: the embedded default VLM on held-out GlyphQA\n",
        f"Model: `{loaded.source}` ({info['parameters'] / 1e6:.2f}M parameters, Qwen3-VL architecture, built by "
        f"`{info['command']}` in {info['total_seconds'] / 60:.0f} min). {per_kind} fine + {per_kind} coarse "
        f"held-out questions (GlyphQA test split, one question per image); evaluation took {seconds:.0f} s.\n",
        "half = the 64 px image (4 visual tokens); full = 128 px (16); auto = the model sees the half image and may "
        "call `resize_image` to get the full one in a tool turn (4 + 16 tokens when it does). The model was "
        "warm-started to resize about half the time whatever the question: WHEN to resize is what the GRPO "
        "stage (`recipes/.../visionthink_grpo.yaml`) teaches.\n",
        "## The shipped trained resolution policy\n",
        "The LoRA adapter trained by `make demo-rl` (VisionThink GRPO on this model; `adaptune/default/assets/policy`, "
        "checksum verified) against always-low (4 visual tokens), always-full (16) and the per-question oracle (the "
        "cheapest of a direct half-resolution answer and the tool path whose greedy answer is right). Held-out "
        "GlyphQA, half digit questions; half of the images carry a large digit (readable at half resolution), the "
        "others a small one (full resolution only), with the same question text: the resize rates on the two show "
        f"whether the decision comes from the image. ({policy_note})\n",
        markdown_table(policy_rows, list(policy_rows[0])) if policy_rows else "",
        "## Accuracy by question kind and resolution\n", markdown_table(rows, list(rows[-1])),
        "## Example images (left: full 128 px; right: half 64 px, enlarged)\n",
        f"Fine question: *{items[0]['question']}* (answer {items[0]['answer']})\n",
        "![fine example](example_fine.png)\n",
        f"Coarse question: *{items[per_kind]['question']}* (answer {items[per_kind]['answer']})\n",
        "![coarse example](example_coarse.png)\n",
        "Digit windows at both resolutions (GlyphQA calibration):\n", "![calibration](calibration.png)\n",
        "## Sample two-turn completions (sampled, T=0.6)\n",
    ]
    for r in examples:
        first = r["first_turn"].strip().replace("\n", " ")
        parts.append(f"- {r['kind']}, answer `{r['answer']}`: first turn `{first}`"
                     + (f"; after the full image `{r['final_turn'].strip()}`" if r["resized"] else "") + "\n")
    if plots:
        parts.append("## Training curves (recorded at build time)\n")
        parts += [f"![{p.stem}](plots/{p.name})\n" for p in plots]
    atomic_write_json(out_dir / "summary.json", {"summaries": summaries, "policy": policy_rows, "build": {
        k: info.get(k) for k in ("command", "parameters", "stages", "total_seconds", "sha256")}})
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(parts))
    print(markdown_table(rows, list(rows[-1])))
    print(f"demo finished: {report}")
    return report


if __name__ == "__main__":
    print(json.dumps(str(run_demo())))
