"""Saving and loading adapter folders safely.

`save_adapter` writes the PEFT folder atomically plus `adaptune.json` (library version, family, a fingerprint of
the base model's shapes, and the sha256 of the weights file); non-finite weights are refused (AdapterSaveError) and
nothing is written. `load_adapter` checks a folder before any weights reach the model: required files present,
adapter_config.json well formed (a mapping, a known `peft_type`, `target_modules` present and of the right type),
adaptune.json well formed, the weights' checksum as recorded, every weight finite, config from a compatible adaptune
version, base model matching the fingerprint; after loading, at least one saved tensor must have landed in the model
and none may be left over (a file whose keys match nothing would otherwise load as an adapter that does nothing).
Every refusal is an AdapterLoadError naming the file and the field. Plain `peft.PeftModel.from_pretrained` still
works on these folders (after `import adaptune`); this is the careful path the CLI and evaluation use.

    save_adapter(peft_model, "runs/x/adapter")
    model = load_adapter(base_model, "runs/x/adapter")
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from .models import detect_family
from .utils.io import atomic_dir
from .version import __version__

META = "adaptune.json"
WEIGHTS = "adapter_model.safetensors"
_FINGERPRINT_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads",
                     "patch_size", "out_hidden_size", "projection_dim", "image_size")


class AdapterLoadError(ValueError):
    """An adapter folder that cannot be loaded onto this model; the message says why."""


class AdapterSaveError(ValueError):
    """An adapter that must not be saved (non-finite weights, tensors still sharded); nothing was written."""


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


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


def _first_sharded(named_tensors: Any) -> str | None:
    """The name of the first DTensor among `(name, tensor)` pairs, or None."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - a torch build without distributed has no DTensor
        return None
    return next((name for name, tensor in named_tensors if isinstance(tensor, DTensor)), None)


def save_adapter(model: Any, path: str | Path, state_dict: dict[str, Any] | None = None,
                 source: str | None = None) -> Path:
    """`model.save_pretrained` into `path` atomically, with adaptune metadata and a model card (README.md).

    `state_dict`: the whole model's weights gathered across processes (`accelerator.get_state_dict`, what a sharded
    FSDP / ZeRO-3 run needs); PEFT picks the adapter's tensors out of it. None: the module's own weights.
    `source`: the model source the base was loaded from (`model.source` of the recipe; None: the name PEFT records,
    the base's `name_or_path`). adapter_config.json's `base_model_name_or_path` and adaptune.json's `source` get
    `shareable_source(source)` (the hub id, or adaptune's source name such as "default" or "tiny:qwen3_vl"), never a
    path on this machine."""
    from .card import shareable_source, write_model_card

    path = Path(path)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        spec = detect_family(base)
        family, kind = spec.name, spec.kind
    except ValueError:
        family = kind = None
    sharded = _first_sharded(state_dict.items() if state_dict is not None else model.named_parameters())
    if sharded is not None:  # PEFT would fail on it with "access the data pointer on an invalid python storage"
        raise AdapterSaveError(f"refusing to save the adapter to {path}: {sharded} is a sharded tensor (a DTensor: "
                               f"FSDP 2 parameters are); gather the weights first and pass them as state_dict "
                               f"(adaptune's runs do: RunLifecycle.save_adapter, through the trainer's accelerator)")
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        shared = None
        for config_file in tmp.rglob("adapter_config.json"):  # one per adapter (named adapters in subfolders)
            config = json.loads(config_file.read_text())
            # no source given: what PEFT recorded (the base's name_or_path), unless it is a path on this machine
            shared = shareable_source(source if source is not None else config.get("base_model_name_or_path"))
            config["base_model_name_or_path"] = shared
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        sums = {}
        if (tmp / WEIGHTS).exists():
            from safetensors.torch import load

            blob = (tmp / WEIGHTS).read_bytes()
            bad = _non_finite(load(blob))
            if bad:
                raise AdapterSaveError(f"refusing to save the adapter to {path}: {len(bad)} tensor(s) hold NaN or "
                                       f"inf (first: {bad[0]}); the training diverged")
            sums[WEIGHTS] = hashlib.sha256(blob).hexdigest()
        (tmp / META).write_text(json.dumps({"adaptune_version": __version__, "family": family, "source": shared,
                                            "base": base_fingerprint(base), "sha256": sums}, indent=2) + "\n")
        if (tmp / "adapter_config.json").exists():
            write_model_card(tmp, source=shared, family=family, family_kind=kind)
    return path


def _version_tuple(version: str) -> tuple[int, ...]:
    """The first three dot-separated numbers; each is its piece's leading digits ("4rc1" is 4, "x" is 0)."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = re.match(r"\d*", piece.strip()).group()
        parts.append(int(digits or 0))
    return tuple(parts)


def check_adapter(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Validate an adapter folder against `model` before any weight reaches it; returns its adapter_config."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterLoadError(f"adapter folder {path} does not exist")
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise AdapterLoadError(f"{path} has no adapter_config.json: not a (complete) PEFT adapter folder")
    try:
        adapter_config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterLoadError(f"{config_file} is not valid JSON ({exc})") from None
    _check_adapter_config(adapter_config, config_file)
    weights = path / WEIGHTS
    if not weights.exists():
        if (path / "adapter_model.bin").exists():
            raise AdapterLoadError(f"{path} holds pickle weights (adapter_model.bin); adaptune loads safetensors only")
        raise AdapterLoadError(f"{path} has no adapter_model.safetensors")
    blob, tensors = _read_weights(weights)  # one read serves the parse, the checksum and the finiteness check
    meta_file = path / META
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AdapterLoadError(f"{meta_file} is not valid JSON ({exc})") from None
        _check_meta(meta, meta_file)
        recorded = meta.get("sha256", {}).get(WEIGHTS)
        if recorded is not None and hashlib.sha256(blob).hexdigest() != recorded:
            raise AdapterLoadError(f"{weights} does not match the sha256 recorded in {meta_file}: the file was "
                                   f"damaged or replaced after it was saved")
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
    bad = _non_finite(tensors)
    if bad:
        raise AdapterLoadError(f"{weights}: {len(bad)} tensor(s) hold NaN or inf (first: {bad[0]}); refusing to "
                               f"load a diverged or damaged adapter")
    return adapter_config


def _read_weights(weights: Path) -> tuple[bytes, dict[str, torch.Tensor]]:
    """The file's bytes and its tensors; AdapterLoadError for a torn, corrupt or empty file."""
    from safetensors.torch import load

    blob = weights.read_bytes()
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own error types for torn or corrupt files
        raise AdapterLoadError(f"{weights} is corrupt or truncated ({exc.__class__.__name__}: {exc})") from None
    if not tensors:
        raise AdapterLoadError(f"{weights} holds no tensors")
    return blob, tensors


def _check_adapter_config(config: Any, config_file: Path) -> None:
    """A mapping with a known peft_type and, where the config class has it, a usable target_modules."""
    if not isinstance(config, dict):
        raise AdapterLoadError(f"{config_file}: must be a JSON object, got {type(config).__name__}")
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise AdapterLoadError(f"{config_file}: field peft_type: missing or not a string ({peft_type!r})")
    known = {str(getattr(k, "value", k)): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    if peft_type not in known:
        raise AdapterLoadError(f"{config_file}: field peft_type: unknown adapter type {peft_type!r} "
                               f"(is the package that registers it imported?)")
    import dataclasses

    fields = {f.name for f in dataclasses.fields(known[peft_type])} if dataclasses.is_dataclass(known[peft_type]) \
        else set()
    if "target_modules" in fields:
        if "target_modules" not in config:
            raise AdapterLoadError(f"{config_file}: field target_modules: missing")
        target = config["target_modules"]
        ok = target is None or isinstance(target, str) or (
            isinstance(target, list) and all(isinstance(t, str) for t in target))
        if not ok:
            raise AdapterLoadError(f"{config_file}: field target_modules: must be a string or a list of strings, "
                                   f"got {target!r}")
    for key in ("r", "lora_alpha"):
        if key in fields and key in config and not (
                isinstance(config[key], (int, float)) and not isinstance(config[key], bool)
                and math.isfinite(config[key]) and config[key] > 0):
            raise AdapterLoadError(f"{config_file}: field {key}: must be a positive number, got {config[key]!r}")


def _check_meta(meta: Any, meta_file: Path) -> None:
    if not isinstance(meta, dict):
        raise AdapterLoadError(f"{meta_file}: must be a JSON object, got {type(meta).__name__}")
    expect = {"adaptune_version": (str,), "family": (str, type(None)), "source": (str, type(None)), "base": (dict,),
              "sha256": (dict,)}
    for key, types in expect.items():
        if key in meta and not isinstance(meta[key], types):
            raise AdapterLoadError(f"{meta_file}: field {key}: wrong type ({type(meta[key]).__name__})")
    for name, digest in meta.get("sha256", {}).items():
        if not isinstance(digest, str):
            raise AdapterLoadError(f"{meta_file}: field sha256.{name}: not a string")


def load_adapter(model: torch.nn.Module, path: str | Path, is_trainable: bool = False) -> Any:
    """Check `path` against `model`, then `PeftModel.from_pretrained`."""
    from peft import PeftModel

    check_adapter(model, path)
    try:
        loaded = PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # size mismatches of adapters without metadata; config values peft cannot use (target_modules: null, ...)
        first = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise AdapterLoadError(f"adapter {path} does not fit this model ({Path(path) / 'adapter_config.json'}): "
                               f"{first}") from None
    _check_keys_landed(loaded, Path(path))
    return loaded


def _check_keys_landed(model: Any, path: Path) -> None:
    """Every saved tensor must name an adapter tensor of the model (else it loaded as an adapter doing nothing)."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS), framework="pt") as handle:
        saved = set(handle.keys())
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    name = getattr(config, "base_model_name_or_path", None)
    try:  # without the base's name: PEFT would look it up (on the Hub) only to compare vocabulary sizes
        if config is not None:
            config.base_model_name_or_path = None
        expected = set(get_peft_model_state_dict(model).keys())
    except Exception:  # a tuner peft cannot enumerate: nothing to compare with
        return
    finally:
        if config is not None:
            config.base_model_name_or_path = name
    unknown = sorted(saved - expected)
    if unknown and len(unknown) == len(saved):
        raise AdapterLoadError(f"{path / WEIGHTS}: none of its {len(saved)} tensors matches this adapter's "
                               f"modules (first: {unknown[0]}); it would load as an adapter that does nothing")
    if unknown:
        raise AdapterLoadError(f"{path / WEIGHTS}: {len(unknown)} of its {len(saved)} tensors match no module of "
                               f"this adapter (first: {unknown[0]})")
