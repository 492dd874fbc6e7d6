"""Build the embedded default VLM from scratch on CPU: a tiny real Qwen3-VL taught GlyphQA by a staged curriculum.

Why staged (stage table and results: docs/glyphqa.md, "The default build"): trained end to end with answer-only
loss, a tiny VLM learns to ignore the image (its vision gradients collapse). So:

1. vision tower only, with throwaway heads on the merger output: per visual token the digit under it (or none), the
   colour / shape of the object centred in it and which (colour, shape) objects cover it; per image the count and the
   main object's colour and shape. Full
   and half images in every batch. Then every merger's last linear layer gets a per-channel standardization folded
   in (`standardize_mergers`): without it the tokens have norm ~90 in one shared direction and the language model
   never learns to read colour or shape from them.
2. vision at a low lr, text model + every "merger" (the deepstack merger too: stage-1 heads never train it) at a high
   lr; one question per sequence (type drawn uniformly) or, 25% of the time, the caption request. (3 per sequence
   was measured worse at full resolution; docs/glyphqa.md.)
3. all weights, lower lr, same data.
4. the resolution-request warm start (`sft.py`): half the protocol conversations answer from the half image, half
   call `resize_image` and answer after the full image, at random; a few answer directly with the FULL image in the
   user turn (the always-full baseline's format); plain VQA stays in the mix. Short.

Every stage runs a planned number of steps (seeded, 1 torch thread) under a wall-clock cap; the lr schedule follows
whichever of the two is further along, so on a slow or shared machine a stage stops early but still anneals (the steps
actually run are recorded in BUILD.json). Stages checkpoint to `--work`; `--resume` continues after the last one.

    python -m adaptune.default.build --out adaptune/default/assets        # the shipped model, ~45 min on 1 core
    adaptune default build --quick --out /tmp/default-quick                 # ~2 minute smoke build
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adaptune.budget.protocol import user_messages
from adaptune.budget.resolution import downsample
from adaptune.data import GlyphQAConfig
from adaptune.data.glyphqa import make_sample
from adaptune.data.shapes import COLORS, DEFAULT_SHAPES, Shape, shape_mask
from adaptune.default import sft
from adaptune.default.evaluate import answer_fixed, cell_summary, heldout_items, two_turn
from adaptune.models.tiny import tiny_qwen3_vl
from adaptune.models.tokenizer import build_tokenizer
from adaptune.utils.io import atomic_dir, atomic_write_json, sha256_file

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073))
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711))


@dataclass
class BuildConfig:
    seed: int = 0
    # 1 thread: on a shared 2-core machine two OpenMP threads ran 6x SLOWER than one (1.4 vs 0.22 s per stage-1 step)
    threads: int = 1
    train_images: int = 6000
    vocab_size: int = 1024
    steps: tuple[int, int, int, int] = (3000, 2000, 600, 500)
    max_minutes: tuple[float, float, float, float] = (11.0, 22.0, 5.0, 8.0)
    batch: tuple[int, int, int, int] = (32, 64, 64, 32)
    digit_weight: float = 3.0  # stage 1: extra weight of the digit-token loss (reading the digit is the slow skill)
    object_weight: float = 4.0  # stage 1: weight of the per-token (colour, shape) multi-hot loss (BCE is small)
    protocol_per_batch: int = 16  # stage 4: protocol conversations per batch, the rest plain VQA
    full_direct_per_batch: int = 6  # stage 4: protocol prompt with the FULL image in the user turn, direct answer
    caption_share: float = 0.25  # stages 2-4: share of plain sequences that are the caption turn instead of a question
    questions_per_sequence: int = 1  # stages 2-4: questions (distinct types where possible) per plain sequence
    eval_per_kind: int = 150
    text: dict[str, Any] = field(default_factory=lambda: dict(
        hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
        head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [6, 5, 5]}))
    vision: dict[str, Any] = field(default_factory=lambda: dict(
        hidden_size=192, depth=4, num_heads=3, intermediate_size=512, deepstack_visual_indexes=[1]))

    @classmethod
    def quick(cls) -> BuildConfig:
        return cls(train_images=300, steps=(40, 40, 20, 20), max_minutes=(0.5, 0.5, 0.3, 0.3), eval_per_kind=8)


# ----------------------------------------------------------------------------------------------- data


def patchify(image: np.ndarray, patch: int = 16, merge: int = 2, temporal: int = 2) -> torch.Tensor:
    """HWC uint8 -> Qwen2-VL pixel rows (grid_h*grid_w, 3*temporal*patch*patch), in the processor's merge order."""
    x = (torch.from_numpy(image).float().div_(255) - MEAN) / STD
    x = x.permute(2, 0, 1)
    c, h, w = x.shape
    gh, gw = h // patch, w // patch
    x = x.unsqueeze(1).expand(c, temporal, h, w).reshape(c, temporal, gh // merge, merge, patch, gw // merge, merge,
                                                         patch)
    return x.permute(2, 5, 3, 6, 0, 1, 4, 7).reshape(gh * gw, c * temporal * patch * patch)


def grid(image: np.ndarray, patch: int = 16) -> list[int]:
    return [1, image.shape[0] // patch, image.shape[1] // patch]


class Corpus:
    """Training rows with full and half images as uint8 arrays, and per-token labels for stage 1."""

    def __init__(self, cfg: BuildConfig):
        gcfg = GlyphQAConfig(seed=cfg.seed)
        self.rows = [make_sample(gcfg, "train", i, False) for i in range(cfg.train_images)]
        self.full = [np.array(r["image"].convert("RGB")) for r in self.rows]
        self.half = [np.array(downsample(r["image"])) for r in self.rows]
        for r in self.rows:
            del r["image"]
        self.coverage = {cells: [object_coverage(r["objects"], cells) for r in self.rows] for cells in (4, 2)}

    def token_labels(self, i: int, cells: int) -> tuple[list[int], list[int], list[int]]:
        """Per merged token (cells x cells grid): digit (10 = none), colour and shape of the object centred there."""
        row, size = self.rows[i], 128 // cells
        digit = [10] * cells * cells
        digit[(row["digit_y"] // size) * cells + row["digit_x"] // size] = row["digit"]
        color, shape = [len(COLORS)] * cells * cells, [len(DEFAULT_SHAPES)] * cells * cells
        for obj in sorted(row["objects"], key=lambda o: o["radius"]):  # the biggest is written last and wins
            k = min(cells - 1, obj["y"] // size) * cells + min(cells - 1, obj["x"] // size)
            color[k], shape[k] = COLORS.index(obj["color"]), DEFAULT_SHAPES.index(obj["shape"])
        return digit, color, shape


def object_coverage(objects: list[dict[str, Any]], cells: int, min_pixels: int = 24, size: int = 128) -> np.ndarray:
    """(cells*cells, colours*shapes) multi-hot: which (colour, shape) objects cover >= `min_pixels` (full-resolution
    pixels) of each merged token's area. The conjunction, not two separate sets, is what binding questions read."""
    out = np.zeros((cells * cells, len(COLORS) * len(DEFAULT_SHAPES)), dtype=np.float32)
    step = size // cells
    for obj in objects:
        mask = np.asarray(shape_mask(Shape(obj["shape"], obj["color"], obj["x"], obj["y"], obj["radius"]), size)) > 0
        counts = mask.reshape(cells, step, cells, step).sum(axis=(1, 3)).reshape(-1)
        pair = COLORS.index(obj["color"]) * len(DEFAULT_SHAPES) + DEFAULT_SHAPES.index(obj["shape"])
        out[counts >= min_pixels, pair] = 1
    return out


def tokenize(tok: Any, texts: list[str], pads: list[list[int]]) -> dict[str, torch.Tensor]:
    """Expand each text's image slots to their visual-token counts, tokenize, label the assistant turns."""
    expanded = []
    for text, counts in zip(texts, pads):
        parts = text.split("<|image_pad|>")
        assert len(parts) == len(counts) + 1, "one visual-token count per image slot"
        expanded.append(parts[0] + "".join("<|image_pad|>" * n + p for n, p in zip(counts, parts[1:])))
    enc = tok(expanded, add_special_tokens=False, return_offsets_mapping=True)
    longest = max(len(ids) for ids in enc["input_ids"])
    ids = torch.full((len(texts), longest), tok.pad_token_id)
    labels = torch.full((len(texts), longest), -100)
    mask = torch.zeros((len(texts), longest), dtype=torch.long)
    start_tag = "<|im_start|>assistant\n"
    for b, (text, row_ids, offsets) in enumerate(zip(expanded, enc["input_ids"], enc["offset_mapping"])):
        spans, pos = [], 0
        while (s := text.find(start_tag, pos)) >= 0:
            e = text.find("<|im_end|>", s) + len("<|im_end|>")
            spans.append((s + len(start_tag), e))
            pos = e
        n = len(row_ids)
        ids[b, :n], mask[b, :n] = torch.tensor(row_ids), 1
        for t, (a, _) in enumerate(offsets):
            if any(s <= a < e for s, e in spans):
                labels[b, t] = row_ids[t]
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "mm_token_type_ids": (ids == image_id).long()}


def lm_loss(model: Any, batch: dict[str, torch.Tensor], pixels: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels,
                image_grid_thw=grids, mm_token_type_ids=batch["mm_token_type_ids"])
    logits = out.logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


# ----------------------------------------------------------------------------------------------- model


def tokenizer_corpus(corpus: Corpus, processor_factory) -> list[str]:
    lines = []
    for r in corpus.rows[:3000]:
        lines += r["questions"] + [r["caption"]] + [f"<answer>{a}</answer>" for a in r["answers"]]
    proto = sft.render(processor_factory(), sft.protocol_messages("What digit?", "7", resize=True))
    return lines + [proto] * 50 + [sft.CAPTION_REQUEST] * 20


def build_model(cfg: BuildConfig, corpus: Corpus):
    _, bootstrap = tiny_qwen3_vl(seed=cfg.seed)
    tok = build_tokenizer(corpus=tokenizer_corpus(corpus, lambda: bootstrap), vocab_size=cfg.vocab_size)
    model, processor = tiny_qwen3_vl(seed=cfg.seed, text=cfg.text, vision=cfg.vision, tokenizer=tok,
                                     max_pixels=128 * 128)
    tc, vc = model.config.text_config, model.config.vision_config
    assert sum(tc.rope_parameters["mrope_section"]) == tc.head_dim // 2, "mrope_section must sum to head_dim/2"
    assert max(vc.deepstack_visual_indexes) < vc.depth, "deepstack_visual_indexes must be below the vision depth"
    return model, processor


# ----------------------------------------------------------------------------------------------- stages


def lr_at(progress: float, warmup: float = 0.04) -> float:
    """Linear warmup over the first 4% of a stage, then cosine down to 10%."""
    if progress < warmup:
        return 0.05 + 0.95 * progress / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))


def run_loop(name: str, total: int, minutes: float, params: list[dict], step_fn, curves: list, log_every: int = 25):
    opt = torch.optim.AdamW(params, weight_decay=0.01)
    base = [g["lr"] for g in opt.param_groups]
    start, ema, done = time.time(), None, 0
    bar = tqdm(range(total), desc=name, mininterval=10, file=sys.stdout)
    for step in bar:
        # Progress is the further of steps and wall clock, so a slow (shared) machine still gets a full schedule.
        progress = max(step / total, (time.time() - start) / (minutes * 60))
        if progress >= 1.0:
            print(f"{name}: time cap {minutes} min reached at step {done}/{total}", flush=True)
            break
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * lr_at(progress)
        loss, extra = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        done = step + 1
        if step % log_every == 0 or step == total - 1:
            curves.append({"stage": name, "step": step, "loss": round(ema, 4), "time_s": round(time.time() - start, 1),
                           **{k: round(v, 4) for k, v in extra.items()}})
            bar.set_postfix(loss=f"{ema:.3f}", **{k: f"{v:.2f}" for k, v in extra.items()})
    return {"steps": done, "planned_steps": total, "seconds": round(time.time() - start, 1)}


def stage1(model, corpus: Corpus, cfg: BuildConfig, rng: np.random.Generator, curves: list) -> dict:
    visual = model.model.visual
    dim = visual.merger.linear_fc2.out_features
    heads = torch.nn.ModuleDict({
        "digit": torch.nn.Linear(dim, 11), "color": torch.nn.Linear(dim, len(COLORS) + 1),
        "shape": torch.nn.Linear(dim, len(DEFAULT_SHAPES) + 1), "count": torch.nn.Linear(2 * dim, 5),
        "main_color": torch.nn.Linear(2 * dim, len(COLORS)),
        "main_shape": torch.nn.Linear(2 * dim, len(DEFAULT_SHAPES)),
        "objects": torch.nn.Linear(dim, len(COLORS) * len(DEFAULT_SHAPES)),
    })
    n = len(corpus.rows)

    def step(_: int):
        idx = rng.integers(n, size=cfg.batch[0] // 2)
        items = [(i, corpus.full[i], 4) for i in idx] + [(i, corpus.half[i], 2) for i in idx]
        pixels = torch.cat([patchify(img) for _, img, _ in items])
        grids = torch.tensor([grid(img) for _, img, _ in items])
        tokens = visual(pixels, grid_thw=grids).pooler_output
        labels = [corpus.token_labels(i, cells) for i, _, cells in items]
        loss = sum(F.cross_entropy(heads[k](tokens), torch.tensor([x for lab in labels for x in lab[j]]))
                   for j, k in enumerate(("digit", "color", "shape")))
        digit_logits = heads["digit"](tokens)
        digit_t = torch.tensor([x for lab in labels for x in lab[0]])
        has = digit_t < 10
        # the one digit token, not drowned by the "none" tokens
        loss = loss + cfg.digit_weight * F.cross_entropy(digit_logits[has], digit_t[has])
        pooled, pos = [], 0
        for _, _, cells in items:
            chunk = tokens[pos:pos + cells * cells]
            pooled.append(torch.cat([chunk.mean(0), chunk.max(0).values]))
            pos += cells * cells
        pooled = torch.stack(pooled)
        rows = [corpus.rows[i] for i, _, _ in items]
        targets = {"count": [len(r["objects"]) - 1 for r in rows],
                   "main_color": [COLORS.index(r["objects"][0]["color"]) for r in rows],
                   "main_shape": [DEFAULT_SHAPES.index(r["objects"][0]["shape"]) for r in rows]}
        for k, t in targets.items():
            loss = loss + F.cross_entropy(heads[k](pooled), torch.tensor(t))
        present = torch.from_numpy(np.concatenate([corpus.coverage[cells][i] for i, _, cells in items]))
        object_logits = heads["objects"](tokens)
        loss = loss + cfg.object_weight * F.binary_cross_entropy_with_logits(object_logits, present)
        exact = ((object_logits > 0).float() == present).all(-1).float()
        half_n = sum(c * c for _, _, c in items[: len(idx)])
        correct = (digit_logits.argmax(-1) == digit_t) & has
        return loss, {"digit_full": correct[:half_n].sum().item() / max(1, has[:half_n].sum().item()),
                      "digit_half": correct[half_n:].sum().item() / max(1, has[half_n:].sum().item()),
                      "objects_full": exact[:half_n].mean().item(), "objects_half": exact[half_n:].mean().item()}

    params = [{"params": list(visual.parameters()) + list(heads.parameters()), "lr": 1e-3}]
    return run_loop("stage1", cfg.steps[0], cfg.max_minutes[0], params, step, curves)


@torch.no_grad()
def standardize_mergers(model, corpus: Corpus, n: int = 256) -> dict[str, float]:
    """Fold a per-channel standardization into the last linear layer of every merger (main and deepstack).

    Why: after stage 1 the merged visual tokens have a norm of ~90, almost all of it one shared direction; the
    colour and shape signal is linearly decodable (96% / 65% with a standardized probe) but is a tiny fraction of each
    RMS-normalised token, and the language model never learned to read it (captions came out "a small yellow square"
    for every shape; binding questions stayed at chance). Zero mean and unit variance per channel, folded into
    `linear_fc2` (exact: the function the heads read is unchanged up to an affine map), fixes that.
    """
    visual = model.model.visual
    images = [corpus.full[i] for i in range(min(n, len(corpus.full)))] + \
             [corpus.half[i] for i in range(min(n, len(corpus.half)))]
    out = visual(torch.cat([patchify(im) for im in images]), grid_thw=torch.tensor([grid(im) for im in images]))
    norms = {}
    layers = [("merger", visual.merger.linear_fc2, out.pooler_output)] + [
        (f"deepstack{k}", m.linear_fc2, f) for k, (m, f) in enumerate(zip(visual.deepstack_merger_list,
                                                                          out.deepstack_features))]
    for name, linear, feats in layers:
        mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-4)
        norms[name] = round(feats.norm(dim=-1).mean().item(), 2)
        linear.weight.div_(sd[:, None])
        linear.bias.sub_(mu).div_(sd)
    return norms


def pick_questions(row: dict[str, Any], rng: np.random.Generator, k: int) -> list[int]:
    """Up to k distinct question indices of `row`: each time a question type uniformly among the types not yet drawn
    (all remaining types once every type is used), then a question of that type."""
    chosen: list[int] = []
    for _ in range(min(k, len(row["questions"]))):
        free = [j for j in range(len(row["questions"])) if j not in chosen]
        types = sorted({row["qtypes"][j] for j in free} - {row["qtypes"][j] for j in chosen}) or \
            sorted({row["qtypes"][j] for j in free})
        want = types[int(rng.integers(len(types)))]
        options = [j for j in free if row["qtypes"][j] == want]
        chosen.append(options[int(rng.integers(len(options)))])
    return chosen


def vqa_batch(corpus: Corpus, cfg: BuildConfig, idx: np.ndarray, rng: np.random.Generator):
    """Plain VQA: `questions_per_sequence` questions per image, 1 by default (or, with probability `caption_share`,
    the caption request).

    One by default: with the opt-in binding questions, an image's other questions leak answers ("How many green
    shapes?" names a colour present); with the default set, 3 per sequence was measured worse at full resolution
    (docs/glyphqa.md)."""
    texts, pads, images = [], [], []
    for i in idx:
        r = corpus.rows[i]
        if rng.random() < cfg.caption_share:
            texts.append(sft.plain_vqa_text([], [], r["caption"], []))
        else:
            texts.append(sft.plain_vqa_text(r["questions"], r["answers"], None,
                                            pick_questions(r, rng, cfg.questions_per_sequence)))
        img = corpus.full[i] if rng.random() < 0.5 else corpus.half[i]
        images.append(img)
        pads.append([(img.shape[0] // 32) ** 2])
    return texts, pads, images


def protocol_batch(corpus: Corpus, plan: list[tuple[int, int, bool]], rendered: dict, start: int, n: int):
    texts, pads, images = [], [], []
    for r, j, resize in plan[start:start + n]:
        texts.append(rendered[(r, j, resize)])
        pads.append([4, 16] if resize else [4])
        images += [corpus.half[r], corpus.full[r]] if resize else [corpus.half[r]]
    return texts, pads, images


def lm_stage(name: str, k: int, model, tok, corpus: Corpus, cfg: BuildConfig, rng: np.random.Generator,
             params: list[dict], curves: list, plan=None, rendered=None, processor=None) -> dict:
    n = len(corpus.rows)
    n_proto = cfg.protocol_per_batch if plan is not None else 0
    n_full = cfg.full_direct_per_batch if plan is not None else 0
    if cfg.batch[k] < n_proto + n_full:
        raise ValueError(f"{name}: batch {cfg.batch[k]} < protocol_per_batch {n_proto} "
                         f"+ full_direct_per_batch {n_full}")

    def step(s: int):
        texts, pads, images = vqa_batch(corpus, cfg, rng.integers(n, size=cfg.batch[k] - n_proto - n_full), rng)
        if n_proto:
            t2, p2, i2 = protocol_batch(corpus, plan, rendered, s * n_proto, n_proto)
            texts, pads, images = t2 + texts, p2 + pads, i2 + images
        for i in rng.integers(n, size=n_full):  # the always-full format: protocol prompt, FULL image, direct answer
            row = corpus.rows[i]
            j = pick_questions(row, rng, 1)[0]
            texts.append(sft.render(processor, sft.protocol_messages(row["questions"][j], row["answers"][j])))
            pads.append([16])
            images.append(corpus.full[i])
        batch = tokenize(tok, texts, pads)
        pixels = torch.cat([patchify(img) for img in images])
        grids = torch.tensor([grid(img) for img in images])
        return lm_loss(model, batch, pixels, grids), {}

    return run_loop(name, cfg.steps[k], cfg.max_minutes[k], params, step, curves)


def param_groups(model, vision_lr: float, rest_lr: float) -> list[dict]:
    vision, rest = [], []
    for name, p in model.named_parameters():
        p.requires_grad_(True)
        (vision if ".visual." in f".{name}" and "merger" not in name else rest).append(p)
    return [{"params": vision, "lr": vision_lr}, {"params": rest, "lr": rest_lr}]


# ----------------------------------------------------------------------------------------------- evaluation, saving


def evaluate(model, processor, per_kind: int, seed: int = 0) -> dict[str, Any]:
    model.eval()
    items = heldout_items(per_kind=per_kind, seed=seed)
    table = {res: cell_summary(answer_fixed(model, processor, items, res)) for res in ("full", "half")}
    greedy = two_turn(model, processor, items[: per_kind // 2] + items[per_kind: per_kind + per_kind // 2])
    sampled = two_turn(model, processor, items, do_sample=True, seed=seed)
    model.train()
    return {"fixed": table, "auto_greedy": cell_summary(greedy), "auto_sampled": cell_summary(sampled),
            "examples": [{k: r[k] for k in ("kind", "first_turn", "final_turn", "answer")} for r in sampled[:3]]}


def save(model, processor, out: Path, info: dict[str, Any]) -> Path:
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        info["sha256"] = {"model.safetensors": sha256_file(tmp / "model.safetensors")}
        info["size_bytes"] = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        atomic_write_json(tmp / "BUILD.json", info)
    return out


def load_stage(model: torch.nn.Module, weights: dict[str, torch.Tensor], stage: int) -> None:
    """Load a stage checkpoint. After stage 1 only the vision tower has trained, so a tokenizer whose size changed
    (new question texts) may keep it: the untrained text embeddings and LM head stay at their seeded init."""
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if mismatched and (stage > 1 or any(".visual." in f".{k}" for k in mismatched)):
        raise ValueError(f"stage{stage}.safetensors does not fit this model ({', '.join(mismatched[:3])}); "
                         "rebuild without --resume or with the tokenizer it was built with")
    model.load_state_dict({k: v for k, v in weights.items() if k not in mismatched}, strict=not mismatched)
    if mismatched:
        print(f"stage 1 checkpoint: kept the seeded init for {len(mismatched)} text tensors (tokenizer size changed)")


def _plain(value: Any) -> Any:
    """numpy / torch scalars in the stage state as Python numbers (JSON)."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_stage(work: Path, stage: int, model: torch.nn.Module, state: dict[str, Any]) -> Path:
    """`stage{k}.safetensors` (weights; the build state as JSON metadata), written to a temporary file, synced and
    renamed into place: a kill leaves either the previous file set or the new one, never a torn `stage{k}` file."""
    from safetensors.torch import save_file

    seen: dict[int, str] = {}
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        ptr = value.data_ptr()
        tensors[key] = value.clone() if ptr in seen else value  # tied weights: safetensors refuses shared storage
        seen.setdefault(ptr, key)
    path = work / f"stage{stage}.safetensors"
    tmp = work / f".stage{stage}.safetensors.tmp-{os.getpid()}"
    try:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(state, default=_plain)})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def latest_stage(work: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest readable stage file in `work`: (stage, weights, state). Empty, torn or unreadable files are skipped
    (with a note; the previous stage is used). `stage{k}.pt` files of older builds are read with
    `weights_only=True` (tensors and plain containers only: a planted pickle is refused, never run)."""
    from safetensors import safe_open

    for k in (4, 3, 2, 1):
        path = work / f"stage{k}.safetensors"
        legacy = work / f"stage{k}.pt"
        try:
            if path.exists():
                with safe_open(str(path), framework="pt") as handle:
                    state = json.loads((handle.metadata() or {})["state"])
                    weights = {key: handle.get_tensor(key) for key in handle.keys()}
                return k, weights, state
            if legacy.exists():
                ckpt = torch.load(legacy, map_location="cpu", weights_only=True)
                return k, ckpt["model"], ckpt["state"]
        except Exception as exc:  # a torn, empty, foreign or code-carrying file
            bad = path if path.exists() else legacy
            print(f"ignoring {bad}: unreadable ({exc.__class__.__name__}: {str(exc)[:200]!r})",
                  flush=True)
    return None


def build(out: Path, cfg: BuildConfig, work: Path, resume: bool = False, command: str = "") -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpus = Corpus(cfg)
    model, processor = build_model(cfg, corpus)
    tok = processor.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters, vocab {len(tok)}, data {time.time() - t0:.0f}s", flush=True)
    state = {"stages": {}, "curves": []}
    done = 0
    if resume:
        found = latest_stage(work)
        if found is not None:
            done, weights, state = found
            load_stage(model, weights, done)
            print(f"resumed after stage {done}", flush=True)
    model.train()
    plan = sft.plan_protocol(corpus.rows, cfg.steps[3] * cfg.protocol_per_batch, cfg.seed)
    for k in range(done + 1, 5):
        rng = np.random.default_rng(cfg.seed * 100 + k)
        torch.manual_seed(cfg.seed * 100 + k)
        if k == 1:
            stats = stage1(model, corpus, cfg, rng, state["curves"])
            stats["token_norm_before_standardizing"] = standardize_mergers(model, corpus)
        elif k == 2:
            stats = lm_stage("stage2", 1, model, tok, corpus, cfg, rng, param_groups(model, 3e-4, 1.5e-3),
                             state["curves"])
        elif k == 3:
            stats = lm_stage("stage3", 2, model, tok, corpus, cfg, rng, param_groups(model, 1e-4, 5e-4),
                             state["curves"])
        else:
            rendered = {}
            for r, j, resize in plan:
                row = corpus.rows[r]
                rendered[(r, j, resize)] = sft.render(processor, sft.protocol_messages(
                    row["questions"][j], row["answers"][j], resize=resize))
            stats = lm_stage("stage4", 3, model, tok, corpus, cfg, rng, param_groups(model, 5e-5, 3e-4),
                             state["curves"], plan=plan, rendered=rendered, processor=processor)
        state["stages"][f"stage{k}"] = stats
        save_stage(work, k, model, state)
        print(f"stage {k} done: {stats}", flush=True)
    t_eval = time.time()
    metrics = evaluate(model, processor, cfg.eval_per_kind, cfg.seed)
    info = {
        "command": command, "config": asdict(cfg), "parameters": n_params, "stages": state["stages"],
        "eval_seconds": round(time.time() - t_eval, 1), "total_seconds": round(time.time() - t0, 1),
        "metrics": metrics, "curves": state["curves"], "torch": torch.__version__,
        "protocol_resize_share": {kind: float(np.mean([rs for r, j, rs in plan if corpus.rows[r]["kinds"][j] == kind]))
                                  for kind in ("fine", "coarse")},
    }
    save(model.eval(), processor, out, info)
    print(json.dumps({"fixed": metrics["fixed"], "auto_sampled": metrics["auto_sampled"]}, indent=1), flush=True)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from adaptune.default.shipped import ASSETS

    parser.add_argument("--out", default=None, help=f"output folder (default: {ASSETS}; --quick: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="a ~2 minute smoke build (never the shipped folder)")
    parser.add_argument("--work", default=None, help="stage checkpoints (default: runs/default-build[-quick])")
    parser.add_argument("--resume", action="store_true", help="continue after the last finished stage in --work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--minutes", default=None, help="wall-clock caps per stage, e.g. 15,14,5,5")
    parser.add_argument("--steps", default=None, help="planned steps per stage, e.g. 3500,1400,500,300")
    parser.add_argument("--digit-weight", type=float, default=None, help="stage-1 weight of the digit-token loss")
    parser.add_argument("--questions-per-sequence", type=int, default=None,
                        help="questions per plain VQA sequence in stages 2-4 (default 1)")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from adaptune.default.shipped import ASSETS

    cfg = BuildConfig.quick() if args.quick else BuildConfig()
    cfg.seed, cfg.threads = args.seed, args.threads
    if args.minutes:
        cfg.max_minutes = tuple(float(x) for x in args.minutes.split(","))
    if args.steps:
        cfg.steps = tuple(int(x) for x in args.steps.split(","))
    if args.digit_weight is not None:
        cfg.digit_weight = args.digit_weight
    if args.questions_per_sequence is not None:
        cfg.questions_per_sequence = args.questions_per_sequence
    if args.quick:
        out = Path(args.out or tempfile.mkdtemp(prefix="adaptune-default-quick-"))
        if out.resolve() == ASSETS.resolve():
            raise SystemExit("--quick never overwrites the shipped default; pass another --out")
    else:
        out = Path(args.out or ASSETS)
    work = Path(args.work or ("runs/default-build-quick" if args.quick else "runs/default-build"))
    command = " ".join(["adaptune default build"] + [shlex.quote(a) for a in sys.argv[3:]]) if "default" in sys.argv \
        else " ".join(shlex.quote(a) for a in sys.argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    build(out, cfg, work, resume=args.resume, command=command)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
