"""Model cards for adapter folders, written with `huggingface_hub`'s card API (`ModelCard`, `ModelCardData`).

`write_model_card(adapter_dir, ...)` writes the folder's README.md: metadata (`base_model` when the source is a hub
id, `library_name: peft`, tags with `adaptune` and the method, the pipeline tag of the model family, and the eval
figures as `model-index` results) and a body (the method and its paper, the recipe, training figures, the eval table,
how to load). `save_adapter` writes a first card (method, source); a finished run rewrites it with the recipe and
the figures (`adaptune.train.lifecycle`). `shareable_source` says what an adapter may name as its base model: the
hub id, or adaptune's own source name ("default", "tiny:qwen3_vl", "pretrained:clip", which `load_model` resolves),
never a path on the training machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .models.loader import _looks_local
from .registry import SOURCES

PIPELINE_TAGS = {"vlm": "image-text-to-text", "encoder": "image-feature-extraction",
                 "segmentation": "image-segmentation"}
PAPERS = {
    "lora": "LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., 2021, arXiv:2106.09685)",
    "flex_projector": "TokenFLEX: one projector for many visual-token budgets",
    "registers": "PH-Reg: post-hoc registers by self-distillation",
    "mask_tuning": "R-AMT: regularized mask tuning",
    "seg_adapter": "VLSM-Adapter: bottleneck adapters for CLIPSeg",
}
TASK_TYPES = {"vqa_sft": "visual-question-answering", "flex_vqa": "visual-question-answering",
              "fewshot_clip": "image-classification", "segmentation": "image-segmentation",
              "register_distill": "image-feature-extraction"}
TRAINING_KEYS = ("trainable_params", "total_params", "train_seconds", "wall_seconds", "world_size")
NOT_RESULTS = ("n", "latency_s", "eval_seconds")  # in the eval table, not in `model-index` (they are not scores)


def is_adaptune_source(source: str) -> bool:
    """True for the sources only adaptune's loader resolves: "tiny:<family>" and the named sources ("default",
    "pretrained:clip", ... in the `SOURCES` registry)."""
    return source.startswith("tiny:") or source in SOURCES or source.partition(":")[0] in SOURCES


def shareable_source(source: str | None) -> str | None:
    """The base model an adapter folder may name: the source itself when it is a hub id or one of adaptune's source
    names, None for a local folder (a path on the training machine means nothing anywhere else)."""
    if not source:
        return None
    source = str(source)
    if is_adaptune_source(source):
        return source
    if _looks_local(source) or Path(source).expanduser().is_absolute():
        return None
    return source


def shareable_recipe(text: str) -> str:
    """The run's recipe as a card shows it: without the `output:` section (where the run was written on the training
    machine) and with a local `model.source` replaced by a placeholder; a machine path means nothing elsewhere."""
    from omegaconf import OmegaConf

    recipe = OmegaConf.create(text)
    recipe.pop("output", None)
    model = recipe.get("model")
    if model is not None and model.get("source") and shareable_source(model.get("source")) is None:
        model.source = "PATH/TO/THE/BASE/MODEL"
    return OmegaConf.to_yaml(recipe)


def _method_from_config(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return str(config.get("peft_type", "unknown")).lower()


def _numbers(summary: dict[str, Any], keys: list[str]) -> list[tuple[str, float]]:
    out = []
    for key in keys:
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append((key, value))
    return out


def _table(rows: list[tuple[str, float]], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def build_model_card(adapter_dir: str | Path, source: str | None, family: str | None = None,
                     family_kind: str | None = None, recipe_text: str | None = None,
                     summary: dict[str, Any] | None = None, run_name: str | None = None, seed: int = 0) -> Any:
    """The `huggingface_hub.ModelCard` of an adapter folder (not written; `write_model_card` writes it).

    `seed`: the recipe's `model.seed` (it picks the weights of a "tiny:<family>" base; shown in the loading code)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    adapter_dir = Path(adapter_dir)
    method = _method_from_config(adapter_dir)
    summary = dict(summary or {})
    name = shareable_source(source)
    hub_base = name if name is not None and not is_adaptune_source(name) else None
    task = summary.get("task")
    eval_keys = sorted(k for k in summary if k.startswith("eval/"))
    evals = _numbers(summary, eval_keys)
    results = [EvalResult(task_type=TASK_TYPES.get(str(task), "other"), dataset_type=str(task or "adaptune"),
                          dataset_name=str(task or "adaptune"), dataset_split=str(summary.get("eval_split", "test")),
                          metric_type=k.removeprefix("eval/"), metric_value=float(v))
               for k, v in evals if k.removeprefix("eval/") not in NOT_RESULTS]
    tags = ["adaptune", method, "peft"] + ([family] if family else [])
    data = ModelCardData(base_model=hub_base, library_name="peft", tags=tags,
                         pipeline_tag=PIPELINE_TAGS.get(str(family_kind)), license=None,
                         model_name=(run_name or adapter_dir.resolve().parent.name) if results else None,
                         eval_results=results or None)
    base_line = (f"`{hub_base}` (Hugging Face Hub)" if hub_base else
                 f"`{name}`, a model built by adaptune's loader (`adaptune.models.load_model({name!r})`)" if name
                 else "a local model folder on the training machine (not recorded: a machine path)")
    if hub_base:
        loading = (f"```python\nimport adaptune                       # registers adaptune's methods with PEFT\n"
                   f"from peft import PeftModel\nfrom adaptune.models import load_model\n\n"
                   f"base = load_model({hub_base!r})\nmodel = PeftModel.from_pretrained(base.model, "
                   f"\"path/or/repo-of-this-adapter\")\n```\n\n"
                   + ("`peft.AutoPeftModel.from_pretrained` also works: adapter_config.json names the hub id and "
                      "the base model's class.\n" if method == "lora" else
                      f"`{method}` is an adaptune method: `import adaptune` before any PEFT loading call "
                      f"(AutoPeftModel included) so PEFT knows it.\n"))
    else:
        shown = repr(name or "PATH/TO/THE/BASE/MODEL") + (f", seed={seed}" if seed and name else "")
        loading = (f"```python\nimport adaptune                       # registers adaptune's methods with PEFT\n"
                   f"from peft import PeftModel\nfrom adaptune.models import load_model\n\n"
                   f"base = load_model({shown})\nmodel = PeftModel.from_pretrained(base.model, "
                   f"\"path/or/repo-of-this-adapter\")\n```\n\n"
                   f"`peft.AutoPeftModel` cannot load this adapter by itself: it passes `base_model_name_or_path` "
                   f"({name!r}) to transformers' `from_pretrained`, and only adaptune's loader knows that name. "
                   f"Load the base with adaptune as above.\n")
    body = [f"# {run_name or adapter_dir.resolve().parent.name}: a `{method}` adapter trained with adaptune", "",
            f"- **Base model:** {base_line}" + (f" (family `{family}`)" if family else ""),
            f"- **Method:** `{method}` — {PAPERS.get(method, 'see the method docs')}",
            "- **Library:** PEFT adapter format (adapter_config.json + adapter_model.safetensors); `adaptune.json` "
            "records adaptune's version, the model source, the base model's shapes and the weights' sha256.", "",
            "## How to load", "", loading]
    if recipe_text:
        body += ["## Recipe", "", "```yaml", shareable_recipe(recipe_text).rstrip(), "```", ""]
    training = _numbers(summary, list(TRAINING_KEYS))
    if training:
        body += ["## Training figures", "", _table(training, ("figure", "value")), ""]
    if evals:
        split = summary.get("eval_split", "test")
        body += [f"## Evaluation (task `{task}`, split `{split}`)", "",
                 _table([(k.removeprefix("eval/"), v) for k, v in evals], ("metric", "value")), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(adapter_dir: str | Path, **kwargs: Any) -> Path:
    """Write `build_model_card(adapter_dir, **kwargs)` as the adapter folder's README.md; returns its path."""
    from .utils.io import atomic_write_text

    path = Path(adapter_dir) / "README.md"
    atomic_write_text(path, str(build_model_card(adapter_dir, **kwargs)))
    return path
