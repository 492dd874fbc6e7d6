"""The one place that turns recipe sections into library objects: PeftConfig and TrainingArguments.

(The GRPO section is converted by `adaptune.rl.trainer`, which calls `training_arguments_kwargs` for the shared
fields.)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig
from transformers import TrainingArguments

from ..config import RESERVED_TRAINING_EXTRA, AdapterSection, Recipe, RecipeError, TrainingSection, validate_params
from ..models import FamilySpec, LoadedModel
from ..registry import METHODS

log = logging.getLogger("adaptune")


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
    """`TrainingArguments` keyword arguments for a `training:` section (the same names, plus adaptune's fixed ones).

    The device is left to accelerate: any accelerator torch sees (CUDA, MPS, XPU, ...) is used; only on a machine
    without one is `use_cpu` set (so that a `torchrun` launch on CPUs joins one gloo group, see
    `lifecycle.process_state`). `bf16: true` on a device that cannot run bf16 is refused with a RecipeError naming
    the key; on the CPU it runs as bf16 autocast, with a warning. Never dropped silently."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=section.max_steps,
        per_device_train_batch_size=section.per_device_train_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps, learning_rate=section.learning_rate,
        weight_decay=section.weight_decay, lr_scheduler_type=section.lr_scheduler_type,
        warmup_steps=section.warmup_steps, max_grad_norm=section.max_grad_norm, logging_steps=section.logging_steps,
        save_steps=section.save_steps, save_strategy="steps", save_total_limit=section.save_total_limit,
        seed=section.seed, data_seed=section.seed, bf16=section.bf16, use_cpu=not has_accelerator(),
        report_to=section.report_to,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=False, eval_strategy="no",
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (and stops the run: lifecycle.FiniteGuard)
    )
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key, value in section.extra.items():
        if key not in fields:
            raise RecipeError(f"training.extra.{key}: not a transformers.TrainingArguments field")
        if key in RESERVED_TRAINING_EXTRA:
            raise RecipeError(f"training.extra.{key}: not allowed ({RESERVED_TRAINING_EXTRA[key]})")
        kwargs[key] = value
    check_bf16(kwargs)
    check_report_to(kwargs.get("report_to"))
    return kwargs


def has_accelerator() -> bool:
    """Whether torch sees any accelerator (CUDA, MPS, XPU, NPU, ...), not only CUDA."""
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def bf16_supported(use_cpu: bool = False) -> bool:
    """Whether the device accelerate will pick can train in bf16 mixed precision (TrainingArguments' own rule: a
    CUDA / MPS / XPU / NPU ... device with bf16, or the CPU when `use_cpu` is set explicitly)."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return bool(use_cpu or is_torch_bf16_gpu_available() or is_torch_xla_available())


def check_bf16(kwargs: dict[str, Any]) -> None:
    """Refuse `bf16` on a device that cannot run it (RecipeError naming `training.bf16`), never drop it silently."""
    if kwargs.get("bf16") and kwargs.get("use_cpu"):
        log.warning("training.bf16: no accelerator; training runs as bf16 autocast on the CPU (slow on most CPUs)")
    if kwargs.get("bf16") and not bf16_supported(bool(kwargs.get("use_cpu"))):
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no accelerator with bf16 found"
        raise RecipeError(f"training.bf16: {device}: cannot train in bf16 here; set training.bf16=false, or "
                          "training.extra.use_cpu=true for bf16 autocast on the CPU")


def check_report_to(report_to: Any) -> None:
    """Refuse a `report_to` integration whose package is missing, naming the extra that installs it."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "tensorboard" in names:
        from transformers.integrations import is_tensorboard_available

        if not is_tensorboard_available():
            raise RecipeError("training.report_to: tensorboard is not installed; pip install 'adaptune[tensorboard]'")


def to_training_arguments(recipe: Recipe, output_dir: Path) -> TrainingArguments:
    return TrainingArguments(**training_arguments_kwargs(recipe.training, output_dir))
