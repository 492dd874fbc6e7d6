"""Saving and loading adapter folders safely.

`save_adapter` writes the PEFT folder atomically plus `adaptune.json` (library version, family, and a fingerprint of
the base model's shapes). `load_adapter` checks a folder before any weights are touched: required files present,
safetensors header readable, config from a compatible adaptune version, base model matching the fingerprint, and
says exactly what differs. Plain `peft.PeftModel.from_pretrained` still works on these folders (after
`import adaptune`); this is the careful path the CLI and evaluation use.

    save_adapter(peft_model, "runs/x/adapter")
    model = load_adapter(base_model, "runs/x/adapter")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .models import detect_family
from .utils.io import atomic_dir
from .version import __version__

META = "adaptune.json"
_FINGERPRINT_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads",
                     "patch_size", "out_hidden_size", "projection_dim", "image_size")


class AdapterLoadError(ValueError):
    """An adapter folder that cannot be loaded onto this model; the message says why."""


def base_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """The shapes an adapter depends on: model_type plus sizes of the model and its sub-configs."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    data = config.to_dict()
    flat: dict[str, Any] = {"model_type": data.get("model_type")}
    for prefix, section in [("", data)] + [(f"{k}.", v) for k, v in data.items() if isinstance(v, dict)]:
        for key in _FINGERPRINT_KEYS:
            if key in section and not isinstance(section[key], (dict, list)):
                flat[prefix + key] = section[key]
    return flat


def save_adapter(model: Any, path: str | Path) -> Path:
    """`model.save_pretrained` into `path` atomically, with adaptune metadata."""
    path = Path(path)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        family = detect_family(base).name
    except ValueError:
        family = None
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        (tmp / META).write_text(json.dumps({"adaptune_version": __version__, "family": family,
                                            "base": base_fingerprint(base)}, indent=2) + "\n")
    return path


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_adapter(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Validate an adapter folder against `model` without loading weights; returns its adapter_config."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterLoadError(f"adapter folder {path} does not exist")
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise AdapterLoadError(f"{path} has no adapter_config.json: not a (complete) PEFT adapter folder")
    try:
        adapter_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterLoadError(f"{config_file} is not valid JSON ({exc})") from None
    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        if (path / "adapter_model.bin").exists():
            raise AdapterLoadError(f"{path} holds pickle weights (adapter_model.bin); adaptune loads safetensors only")
        raise AdapterLoadError(f"{path} has no adapter_model.safetensors")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            list(handle.keys())
    except Exception as exc:  # safetensors raises its own error types for torn or corrupt files
        raise AdapterLoadError(f"{weights} is corrupt or truncated ({exc.__class__.__name__}: {exc})") from None
    meta_file = path / META
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise AdapterLoadError(f"{meta_file} is not valid JSON ({exc})") from None
        saved_version = str(meta.get("adaptune_version", "0"))
        if _version_tuple(saved_version)[:2] > _version_tuple(__version__)[:2]:
            raise AdapterLoadError(f"{path} was written by adaptune {saved_version}, newer than this adaptune "
                                   f"{__version__}; upgrade adaptune to load it")
        expected, actual = meta.get("base", {}), base_fingerprint(model)
        diffs = [f"{k}: adapter expects {expected[k]!r}, model has {actual.get(k)!r}"
                 for k in expected if expected[k] != actual.get(k)]
        if diffs:
            raise AdapterLoadError(f"adapter {path} was trained on another base model ({meta.get('family')}); "
                                   + "; ".join(diffs))
    return adapter_config


def load_adapter(model: torch.nn.Module, path: str | Path, is_trainable: bool = False) -> Any:
    """Check `path` against `model`, then `PeftModel.from_pretrained`."""
    from peft import PeftModel

    check_adapter(model, path)
    try:
        return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)
    except RuntimeError as exc:  # e.g. size mismatches of adapters without metadata
        raise AdapterLoadError(f"adapter {path} does not fit this model: {str(exc).splitlines()[0]}") from None
