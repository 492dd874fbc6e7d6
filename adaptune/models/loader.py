"""Load a model and its processor from a local folder, a hub id, a tiny spec, or the embedded default.

    from adaptune.models import load_model
    loaded = load_model("tiny:qwen3_vl")                   # seeded tiny model built in code
    loaded = load_model("/path/to/saved/model")            # anything saved with save_pretrained
    loaded = load_model("Qwen/Qwen3-VL-2B-Instruct", quantization="nf4")   # real checkpoints, the normal way
    loaded.model, loaded.processor, loaded.family

Remote code stays off unless asked for; quantized loading keeps the vision tower and the projector (and anything an
adapter replaces) in full precision, with module names resolved through the family description.

Named sources ("default", "pretrained:clip", ...) are looked up in the `SOURCES` registry: the package that owns the
model registers a resolver `resolve(spec, seed) -> local folder` (`adaptune.default` registers "default",
`adaptune.pretrain` registers the prefix "pretrained"), so this low layer never imports them. The shipped ones are
registered at the first read of the registry (the filler `import adaptune` installs, which any `import adaptune.<x>`
runs first); a plugin registers its own the same way:

    from adaptune.registry import SOURCES
    SOURCES.register("mirror", lambda spec, seed: f"/models/{spec}")   # load_model("mirror:qwen3-vl-2b")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import transformers

from ..registry import SOURCES
from .chat_templates import ChatTemplateError, prepare_chat_template
from .families import FamilySpec, UnsupportedModelError, build_tiny, detect_family, get_family
from .processors import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen3VLProcessor

Quantization = Literal["nf4", "int8"] | None


class ModelLoadError(RuntimeError):
    """A model path or checkpoint that cannot be loaded, with a message that says why."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: Any
    family: FamilySpec
    source: str
    chat_template: str = "checkpoint"
    """The chat template in use: "checkpoint" (the source's own), a shipped tool template's name, or a file path."""


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.sep in path.rstrip(os.sep) and Path(path).parts[0] in (
        ".", "..") or Path(path).exists()


def four_bit_compute_dtype() -> torch.dtype:
    """The dtype 4-bit layers compute in: bfloat16 on a GPU that supports it (QLoRA's choice: half the activation
    memory of fp32, fp32's range), float32 otherwise (CPUs and pre-Ampere GPUs). Decided when the model loads."""
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def require_bitsandbytes(mode: str) -> None:
    """bitsandbytes is an extra (`pip install adaptune[quant]`), needed only when a model is loaded quantized."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(f"model.quantization: {mode!r} needs bitsandbytes, which is not installed; install the "
                             f"extra with `pip install adaptune[quant]` (or `pip install bitsandbytes`)")


def quantization_config(spec: FamilySpec, mode: Quantization, keep_full_precision: list[str] | None = None):
    """A `BitsAndBytesConfig` that leaves the vision tower, projector and `keep_full_precision` unquantised; nf4
    computes in `four_bit_compute_dtype()`."""
    if mode is None:
        return None
    if mode in ("nf4", "int8"):
        require_bitsandbytes(mode)
    skip = [p for p in (spec.vision_path, spec.projector_path, "lm_head") if p] + list(keep_full_precision or [])
    if mode == "nf4":
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=four_bit_compute_dtype(),
            llm_int8_skip_modules=skip,
        )
    if mode == "int8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    raise ValueError(f"quantization must be 'nf4', 'int8' or None, got {mode!r}")


def load_processor(path: str | Path, spec: FamilySpec, trust_remote_code: bool = False) -> Any:
    """The processor saved next to a model; image-only Qwen processors when torchvision is missing."""
    path = str(path)
    if spec.name in ("qwen3_vl", "qwen2_5_vl"):
        cls = ImageOnlyQwen3VLProcessor if spec.name == "qwen3_vl" else ImageOnlyQwen2_5_VLProcessor
        saved = Path(path) / "processor_config.json"
        if saved.exists() and cls.__name__ in saved.read_text():
            return cls.from_pretrained(path)
        try:
            return transformers.AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (AttributeError, ImportError, ValueError, TypeError):
            return cls.from_pretrained(path)
    if spec.kind == "encoder" and spec.name == "dinov2":
        return transformers.AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return transformers.AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)


def read_config(path: str, trust_remote_code: bool = False) -> dict[str, Any]:
    local = Path(path)
    if local.is_dir():
        cfg = local / "config.json"
        if not cfg.exists():
            raise ModelLoadError(f"{path} has no config.json; is it a model folder saved with save_pretrained?")
        try:
            return json.loads(cfg.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{cfg} is not valid JSON: {exc}") from None
    try:
        return transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).to_dict()
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {path!r}: not a local folder and not reachable on the hub ({exc.__class__.__name__})"
        ) from None


def resolve_source(source: str, seed: int = 0) -> str:
    """The local folder a named source stands for ("default", or "<prefix>:<spec>" with a registered prefix);
    any other source (a folder, a hub id) comes back unchanged."""
    if source in SOURCES:
        name, spec = source, ""
    else:
        name, sep, spec = source.partition(":")
        if not sep or name not in SOURCES:
            return source
    return str(SOURCES.get(name)(spec, seed))


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """`dtype` as `load_model` takes it (a torch dtype, its name such as "bfloat16" or "torch.float16", "auto", or
    None for the source's default) -> a floating torch dtype, "auto" or None; anything else raises a ValueError."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str):
        name = dtype.strip().removeprefix("torch.")
        if name == "auto":
            return "auto"
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return value
    raise ValueError(f"dtype must be a floating-point torch dtype (e.g. torch.bfloat16 or 'bfloat16'), 'auto' or None; "
                     f"got {dtype!r}")


def load_model(
    source: str | os.PathLike,
    family: str | None = None,
    quantization: Quantization = None,
    dtype: torch.dtype | str | None = None,
    keep_full_precision: list[str] | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    device_map: Any = None,
    chat_template: str | None = None,
    tool_calling: bool = False,
) -> LoadedModel:
    """Load `source` with its processor and family spec.

    Sources: "tiny:<family>" (random tiny model built in code), a named source from the `SOURCES` registry
    ("default": the embedded GlyphQA VLM; "pretrained:clip" / "pretrained:clipseg": tiny CLIP / CLIPSeg pre-trained
    on the companion sets, cached under $ADAPTUNE_CACHE after the first build), a local folder, or a hub id.
    `chat_template` is the recipe's `model.chat_template` (None: the checkpoint's own; "checkpoint"; a shipped tool
    template's name; a .jinja path) and `tool_calling` asks for a template TRL's tool loop can run
    (`chat_templates.prepare_chat_template`; a `ChatTemplateError` names the recipe key).
    """
    source = str(source)
    dtype = resolve_dtype(dtype)
    if source.startswith("tiny:"):
        name = source.split(":", 1)[1]
        model, processor = build_tiny(name, seed=seed)
        if isinstance(dtype, torch.dtype):
            model.to(dtype)  # built in fp32; "auto" keeps that
        return _with_template(LoadedModel(model, processor, get_family(name), source), chat_template, tool_calling)
    source = resolve_source(source, seed)
    if _looks_local(source) and not Path(source).expanduser().exists():
        raise ModelLoadError(f"model path {source!r} does not exist")
    source = str(Path(source).expanduser()) if Path(source).expanduser().exists() else source
    config = read_config(source, trust_remote_code)
    spec = get_family(family) if family else detect_family(config)
    if family and config.get("model_type") not in spec.model_types:
        raise UnsupportedModelError(
            f"{source} has model_type {config.get('model_type')!r}, not a {family} model ({'/'.join(spec.model_types)})"
        )
    model_cls = getattr(transformers, spec.model_class)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    qcfg = quantization_config(spec, quantization, keep_full_precision)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = spec.expose_input_embeddings(model_cls.from_pretrained(source, **kwargs).eval())
    processor = load_processor(source, spec, trust_remote_code)
    return _with_template(LoadedModel(model, processor, spec, source), chat_template, tool_calling)


def _with_template(loaded: LoadedModel, chat_template: str | None, tool_calling: bool) -> LoadedModel:
    if chat_template is not None or tool_calling:
        if loaded.family.kind != "vlm":
            raise ChatTemplateError(f"model.chat_template: family {loaded.family.name!r} is not a chat model "
                                    f"(kind {loaded.family.kind!r}); leave the key unset")
        loaded.chat_template = prepare_chat_template(loaded.processor, loaded.family, chat_template, tool_calling)
    return loaded
