"""The one place that teaches PEFT about adaptune's methods.

A method's `MethodInfo` also names its training objective (`objective`, a `methods.objective.MethodObjective`
subclass): the extra loss terms and batch hooks the trainer applies on every task (`adaptune.train.objectives`).

PEFT's `register_peft_method` only accepts names that already exist in its closed `PeftType` enum, so a new member is
added here at import time, idempotently (importing adaptune twice, or reloading a module, is harmless). Each method
folder calls `register_method(...)` from its `__init__`; that also lists the method in adaptune's `METHODS` registry
so the CLI and the shared test matrix see it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peft.utils import peft_types
from peft.utils.peft_types import PeftType, register_peft_method

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
