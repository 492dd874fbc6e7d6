"""The one place that turns recipe sections into library objects: PeftConfig and TrainingArguments.

(The GRPO section is converted by `adaptune.rl.trainer`, which calls `training_arguments_kwargs` for the shared
fields.)
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig
from transformers import TrainingArguments

from ..config import RESERVED_TRAINING_EXTRA, AdapterSection, Recipe, RecipeError, TrainingSection, validate_params
from ..models import FamilySpec, LoadedModel
from ..registry import METHODS


def default_lora_targets(spec: FamilySpec) -> str:
    """LoRA on the language model's attention and MLP projections (VLMs) or the vision attention (encoders)."""
    names = r"(q_proj|k_proj|v_proj|o_proj|out_proj|gate_proj|up_proj|down_proj|query|key|value)"
    if spec.kind == "vlm" and spec.language_model_path:
        return re.escape(spec.language_model_path) + r"\..*\." + names
    return rf".*{names}"


def to_peft_config(section: AdapterSection, loaded: LoadedModel, where: str = "adapter.params") -> PeftConfig | None:
    """A PeftConfig for `section` ("lora", a registered adaptune method, or "none" -> None)."""
    method = section.method
    params = dict(section.params)
    if method == "none":
        if params:
            raise RecipeError(f"{where}: method 'none' takes no params")
        return None
    if method == "lora":
        params.setdefault("target_modules", default_lora_targets(loaded.family))
        params.setdefault("r", 8)
        params.setdefault("lora_alpha", 2 * params["r"])
        return validate_params(params, LoraConfig, where)
    if method not in METHODS:
        raise RecipeError(f"adapter.method: unknown method {method!r}; known: lora, none, {', '.join(METHODS)}")
    info = METHODS.get(method)
    if info.families and loaded.family.name not in info.families:
        raise RecipeError(
            f"adapter.method: {method!r} supports families {', '.join(info.families)}, not {loaded.family.name!r}"
        )
    return validate_params(params, info.config_cls, where)


def training_arguments_kwargs(section: TrainingSection, output_dir: Path) -> dict[str, Any]:
    on_gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=section.max_steps, per_device_train_batch_size=section.batch_size,
        gradient_accumulation_steps=section.grad_accum, learning_rate=section.learning_rate,
        weight_decay=section.weight_decay, lr_scheduler_type=section.lr_scheduler, warmup_steps=section.warmup,
        max_grad_norm=section.max_grad_norm, logging_steps=section.logging_steps, save_steps=section.save_steps,
        save_strategy="steps", save_total_limit=section.save_total_limit, seed=section.seed, data_seed=section.seed,
        bf16=section.bf16 and on_gpu, use_cpu=not on_gpu, report_to=[], remove_unused_columns=False,
        dataloader_num_workers=0, disable_tqdm=False, eval_strategy="no",
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (and stops the run: lifecycle.FiniteGuard)
    )
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key, value in section.extra.items():
        if key not in fields:
            raise RecipeError(f"training.extra.{key}: not a transformers.TrainingArguments field")
        if key in RESERVED_TRAINING_EXTRA:
            raise RecipeError(f"training.extra.{key}: not allowed ({RESERVED_TRAINING_EXTRA[key]})")
        kwargs[key] = value
    return kwargs


def to_training_arguments(recipe: Recipe, output_dir: Path) -> TrainingArguments:
    return TrainingArguments(**training_arguments_kwargs(recipe.training, output_dir))
