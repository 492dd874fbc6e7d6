"""Per-call budget inputs: how a model reads the visual-token budget back from a `BudgetProcessor` batch.

Every budget method (TokenFLEX, the token reducers) needs the same two facts about the call in progress, and Hugging
Face's model signatures have no place for them:

- `vision_grid`: Qwen-VL's real patch grid, which `BudgetProcessor` moves to a `vision_grid_thw` input while
  `image_grid_thw` carries the budget's compact grid (what M-RoPE and the language side see);
- `placeholders`: the number of image placeholder tokens in `input_ids` (LLaVA/SmolVLM: the budget times the images).

How: `add_budget_listener(model, name, listener)` installs, once per model, a forward pre-hook that pops
`vision_grid_thw` off the inputs and counts the placeholders whenever `pixel_values` are present, a post-hook that
clears them, and a `generate()` that accepts `vision_grid_thw` and keeps them stashed for the whole call (Hugging Face
rejects unknown generate kwargs, and encodes the images before the first forward, where no forward hook sees them).
Each registered listener is called with a `BudgetCall` at the start of a call and with `None` at its end; the hooks go
away with the last listener (`remove_budget_listener`).

    def listener(model, call):          # call: BudgetCall | None
        ...
    add_budget_listener(model, "my_method", listener)
    model.generate(**BudgetProcessor(processor)(images=..., text=..., budget=9, return_tensors="pt"))
    remove_budget_listener(model, "my_method")

Listeners take the model as an argument (no closures over it), so a deep-copied model notifies its own copy.
`check_vision_grids` is the shared check of a Qwen-VL budget batch's two grids before the vision tower runs.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .grid import BudgetError


@dataclass(frozen=True)
class BudgetCall:
    """What one forward / generate call says about its visual-token budget."""

    vision_grid: torch.Tensor | None  # Qwen-VL: the real patch grid (`vision_grid_thw`), else None
    placeholders: int | None          # image placeholder tokens in `input_ids` (None without pixel_values)


Listener = Callable[[nn.Module, "BudgetCall | None"], None]

_LISTENERS = "_budget_listeners"
_SCOPED = "_budget_scoped"


def image_token_id(config: Any) -> int | None:
    """The image placeholder id of a VLM config (the attribute name differs between families)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def placeholder_count(model: nn.Module, input_ids: torch.Tensor | None, pixel_values: Any) -> int | None:
    """Image placeholder tokens in `input_ids`, or None when the call carries no images (or no ids)."""
    token_id = image_token_id(model.config)
    if pixel_values is None or input_ids is None or token_id is None:
        return None
    return int((input_ids == token_id).sum())


def budget_listeners(model: nn.Module) -> dict[str, Listener]:
    """The listeners registered on `model` (name -> listener); empty when none."""
    return model.__dict__.get(_LISTENERS, {})


def _notify(model: nn.Module, call: BudgetCall | None) -> None:
    for listener in list(budget_listeners(model).values()):
        listener(model, call)


def _scoped(model: nn.Module) -> bool:
    return bool(model.__dict__.get(_SCOPED, False))


def _budget_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Take the per-call budget inputs off the model inputs and hand them to the listeners."""
    vision_grid = kwargs.pop("vision_grid_thw", None)
    pixel_values = kwargs.get("pixel_values")
    if pixel_values is not None and not _scoped(module):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        _notify(module, BudgetCall(vision_grid, placeholder_count(module, input_ids, pixel_values)))
    return args, kwargs


def _budget_post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    if kwargs.get("pixel_values") is not None and not _scoped(module):
        _notify(module, None)


def _budget_generate(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """`generate` that accepts `vision_grid_thw`: the budget inputs stay stashed for the whole call."""
    vision_grid = kwargs.pop("vision_grid_thw", None)
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    _notify(self, BudgetCall(vision_grid, placeholder_count(self, input_ids, kwargs.get("pixel_values"))))
    self.__dict__[_SCOPED] = True
    try:
        return type(self).generate(self, *args, **kwargs)
    finally:
        self.__dict__[_SCOPED] = False
        _notify(self, None)


def add_budget_listener(model: nn.Module, name: str, listener: Listener) -> None:
    """Register `listener` under `name` (replacing one of the same name) and install the input hooks once."""
    listeners = dict(budget_listeners(model))
    listeners[name] = listener
    model.__dict__[_LISTENERS] = listeners
    if not any(hook is _budget_pre_hook for hook in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(_budget_pre_hook, with_kwargs=True)
        model.register_forward_hook(_budget_post_hook, with_kwargs=True, always_call=True)
    if hasattr(type(model), "generate"):
        model.generate = types.MethodType(_budget_generate, model)


def remove_budget_listener(model: nn.Module, name: str) -> None:
    """Drop the listener `name`; with the last one gone, remove the hooks and the `generate` override."""
    listeners = dict(budget_listeners(model))
    listeners.pop(name, None)
    if listeners:
        model.__dict__[_LISTENERS] = listeners
        return
    model.__dict__.pop(_LISTENERS, None)
    model.__dict__.pop(_SCOPED, None)
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key in [k for k, hook in hooks.items() if hook in (_budget_pre_hook, _budget_post_hook)]:
            del hooks[key]
    for registry in ("_forward_hooks_always_called", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
        table = getattr(model, registry, None)
        if table is not None:
            for key in [k for k in table if k not in model._forward_hooks and k not in model._forward_pre_hooks]:
                del table[key]
    if getattr(model.__dict__.get("generate"), "__func__", None) is _budget_generate:
        model.__dict__.pop("generate")


def check_vision_grids(patches: int, real: torch.Tensor, language: torch.Tensor, merge: int, method: str) -> None:
    """Qwen-VL: check a budget batch's grids against the `patches` rows of `pixel_values` before the vision tower runs.

    `real` is the patch grid the tower runs on (`vision_grid_thw`), `language` the grid the language side was told
    about (`image_grid_thw`, the budget's compact grid); `method` names the budget method in the messages.
    """
    described = int(real.prod(-1).sum())
    if described != patches:
        raise ValueError(
            f"pixel_values hold {patches} patches but the vision grid describes {described}; a {method} batch whose "
            "image_grid_thw was set to a budget must also pass `vision_grid_thw` (use adaptune.budget.BudgetProcessor, "
            "alias FlexProcessor)")
    if real.shape != language.shape:
        raise ValueError(f"vision_grid_thw has {real.shape[0]} images but image_grid_thw {language.shape[0]}")
    if bool((real[:, 0] != 1).any()):
        raise ValueError(f"{method} supports images only (temporal grid 1), not videos")
    if bool((language[:, 1:] % merge != 0).any()):
        raise BudgetError(f"image_grid_thw {language.tolist()} is not a multiple of the merge size {merge}")
