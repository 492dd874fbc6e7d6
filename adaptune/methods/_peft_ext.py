"""The one place that teaches PEFT about adaptune's methods.

A method's `MethodInfo` also names its training objective (`objective`, a `methods.objective.MethodObjective`
subclass): the extra loss terms and batch hooks the trainer applies on every task (`adaptune.train.objectives`).

PEFT's `register_peft_method` only accepts names that already exist in its closed `PeftType` enum, so a new member is
added here at import time, idempotently (importing adaptune twice, or reloading a module, is harmless). Each method
folder calls `register_method(...)` from its `__init__`; that also lists the method in adaptune's `METHODS` registry
so the CLI and the shared test matrix see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import peft_types
from peft.utils.peft_types import PeftType, register_peft_method
from torch import nn

from ..registry import METHODS
from .objective import MethodObjective


def add_peft_type(name: str) -> PeftType:
    """Return `PeftType[NAME]`, adding the member to the enum if this peft version does not know it."""
    key = name.upper()
    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_ = key
    member._value_ = key
    member.__objclass__ = PeftType
    member.__init__(key)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    type.__setattr__(PeftType, key, member)
    peft_types.PeftType = PeftType
    return member


@dataclass(frozen=True)
class MethodInfo:
    """What the CLI, the shared test matrix and the trainer need to know about an adapter method."""

    name: str
    config_cls: type
    model_cls: type
    families: tuple[str, ...]
    test_config: Callable[[str, Any], Any] = field(repr=False)
    """`test_config(family, model) -> PeftConfig` for the tiny model of `family` (used by the test matrix)."""
    description: str = ""
    mergeable: bool = False
    objective: type[MethodObjective] | None = None
    """What the method adds to training on every task (extra loss terms, gradient surgery, batch hooks); None: the
    task's loss as is. Built per run from the adapter's config by `adaptune.train.objectives`."""
    fsdp: bool = True
    """Whether the method may train with its model sharded by FSDP. False: such a run is refused before the first
    step (docs/scaling.md says what failed: on 2 CPU processes under accelerate's own FSDP 2 code)."""


def register_method(info: MethodInfo, prefix: str | None = None) -> MethodInfo:
    """Register `info` with PEFT (extending `PeftType`) and with adaptune's `METHODS` registry. Idempotent."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    peft_type = add_peft_type(info.name)
    known_config = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if known_config is None:
        register_peft_method(name=info.name, config_cls=info.config_cls, model_cls=info.model_cls, prefix=prefix)
    elif known_config.__qualname__ != info.config_cls.__qualname__:
        raise ValueError(f"PEFT type {info.name!r} is already registered to {known_config!r}")
    else:  # re-import (e.g. importlib.reload): point PEFT at the fresh classes
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = info.config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = info.model_cls
    METHODS._items[info.name] = info
    return info


# ------------------------------------------------------------------------------------- shared tuner behaviour


def restore_base_module(parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> bool:
    """`BaseTuner._replace_module` for `unload()`: when `new_module` is the module `child` wraps, put it back as it was
    and return True. PEFT's default copies `.weight` / `.bias` across, which breaks on wrapped modules that have none
    (attention blocks, whole towers) and is not needed: the original module object is returned untouched."""
    if isinstance(child, BaseTunerLayer) and new_module is child.get_base_layer():
        setattr(parent, child_name, new_module)
        return True
    return False


def adapter_dtype_device(module: nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    """dtype and device of a wrapped module's first floating-point weight (None, None when it has none)."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype, param.device
    return None, None


def _drop_adapter_entries(layer: BaseTunerLayer, adapter_name: str) -> None:
    for attr in tuple(layer.adapter_layer_names) + tuple(layer.other_param_names):
        container = getattr(layer, attr, None)
        if hasattr(container, "__contains__") and hasattr(container, "__delitem__") and adapter_name in container:
            del container[adapter_name]


@contextmanager
def roll_back_on_failure(tuner: Any, model: nn.Module, adapter_name: str) -> Iterator[None]:
    """Run an adapter injection; if it fails, leave no trace of `adapter_name` in the model.

    PEFT's `add_adapter` / `load_adapter` only forget the config when injection raises; layers that already received
    the adapter (or were wrapped for it) would stay behind. Here their entries for `adapter_name` are removed, and a
    layer created by the failed call is replaced by the module it wrapped."""
    before = {id(m) for m in model.modules() if isinstance(m, BaseTunerLayer)}
    try:
        yield
    except BaseException:
        for name, module in list(model.named_modules()):
            if not isinstance(module, BaseTunerLayer) or not name:
                continue
            _drop_adapter_entries(module, adapter_name)
            if id(module) not in before:
                parent_name, _, child_name = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child_name, module.get_base_layer())
        targeted = getattr(tuner, "targeted_module_names", None)
        if isinstance(targeted, list):
            present = {n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
            targeted[:] = [n for n in targeted if n in present]
        raise
