"""Attaching a token reducer to a Hugging Face VLM: `apply_reducer` (a context) and `reduce_tokens` (a handle).

The model reads the budget from the batch exactly as TokenFLEX does (`adaptune.budget.inputs`): feed it a
`BudgetProcessor` batch with K placeholders per image, and each image's visual tokens are reduced to K after the
projector, before the language model sees them. No weights change and nothing is trained.

Where the reduction happens:
- Qwen3-VL / Qwen2.5-VL: hooks on the vision tower (`model.visual`). The tower runs on the real patch grid
  (`vision_grid_thw`) and its merger output `(n, d)` per image (raster order of the n = H/2 x W/2 token grid) is
  reduced to the K = h*w tokens of the compact grid in `image_grid_thw`; Qwen3-VL's deepstack features are reduced
  with the same selection / merge. The language side (M-RoPE) lays the K kept or merged tokens out on that compact
  h x w grid in raster order, so they get compact grid positions, not their original ones (as TokenFLEX's pooled
  tokens do).
- LLaVA: a hook on `multi_modal_projector`; its output `(images, n, d)` is reduced to K = placeholders / images.
  Attention scores (`fastervlm`) are read at the encoder layer whose output LLaVA uses (`vision_feature_layer` of the
  config; a per-call override is not seen).

With K = n every reducer keeps every token in order, so outputs equal the base model's exactly.

    with apply_reducer(model, "divprune"):
        model.generate(**BudgetProcessor(processor)(images=imgs, text=prompts, budget=9, return_tensors="pt"))
    handle = reduce_tokens(model, "tome"); ...; handle.remove()
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...models import UnsupportedModelError, detect_family, get_family
from ...registry import REDUCERS
from ..grid import BudgetError
from ..inputs import BudgetCall, add_budget_listener, budget_listeners, check_vision_grids, remove_budget_listener
from .attention import InputCapture, cls_attention, received_attention
from .base import Reduction, TokenReducer

LISTENER = "token_reducer"


def get_reducer(reducer: str | TokenReducer | type[TokenReducer]) -> TokenReducer:
    """A reducer instance from a registered name, a `TokenReducer` subclass, or an instance (returned as is)."""
    if isinstance(reducer, TokenReducer):
        return reducer
    if isinstance(reducer, type) and issubclass(reducer, TokenReducer):
        return reducer()
    return REDUCERS.get(reducer)()


def _hf_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ReducerHandle:
    """A reducer attached to a model; `remove()` (or leaving `apply_reducer`) detaches it.

    `last_reductions` holds the per-image `Reduction`s of the latest vision forward, `last_scores` the per-image token
    scores they were chosen from (attention reducers only), `last_selection_s` the seconds spent computing scores,
    choosing and applying the reductions.
    """

    def __init__(self, model: nn.Module, reducer: str | TokenReducer | type[TokenReducer]) -> None:
        self.reducer = get_reducer(reducer)
        self.model = _hf_model(model)
        try:
            self.family = detect_family(self.model).name
        except ValueError as exc:
            raise UnsupportedModelError(f"token reducer {self.reducer.name!r} supports the VLM families "
                                        f"{', '.join(self.reducer.families)}; {exc}") from None
        if self.family not in self.reducer.families:
            raise UnsupportedModelError(
                f"token reducer {self.reducer.name!r} supports the VLM families {', '.join(self.reducer.families)}, "
                f"not {self.family!r}")
        others = list(budget_listeners(self.model))
        if others:
            raise ValueError(f"this model already has a visual-token budget method attached ({', '.join(others)}); "
                             "attach one budget method at a time (remove the other first)")
        self.call: BudgetCall | None = None
        self.last_reductions: list[Reduction] = []
        self.last_scores: list[torch.Tensor] | None = None
        self.last_selection_s = 0.0
        self._language_grid: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._capture: InputCapture | None = None
        self._removed = False
        if self.family in ("qwen3_vl", "qwen2_5_vl"):
            self._attach_qwen()
        else:
            self._attach_llava()
        add_budget_listener(self.model, LISTENER, self._listen)

    # ------------------------------------------------------------------------------------------------- lifecycle
    def _listen(self, model: nn.Module, call: BudgetCall | None) -> None:
        self.call = call

    def remove(self) -> None:
        """Detach the reducer: the model is back to its own behaviour."""
        if self._removed:
            return
        for handle in self._handles:
            handle.remove()
        if self._capture is not None:
            self._capture.remove()
        remove_budget_listener(self.model, LISTENER)
        self._removed = True

    def __enter__(self) -> ReducerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _reduce(self, tokens: torch.Tensor, budget: int, scores: torch.Tensor | None) -> Reduction:
        return self.reducer(tokens, budget, scores if self.reducer.needs_attention else None)

    # ------------------------------------------------------------------------------------------------- Qwen-VL
    def _attach_qwen(self) -> None:
        visual = get_family(self.family).get_module(self.model, "vision")
        self._merge = int(visual.spatial_merge_size)
        self._handles.append(visual.register_forward_pre_hook(self._qwen_pre, with_kwargs=True))
        self._handles.append(visual.register_forward_hook(self._qwen_post, with_kwargs=True))
        if self.reducer.needs_attention:
            self._capture = InputCapture(visual.blocks[-1].attn)

    def _qwen_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Run the tower on the real patch grid (`vision_grid_thw`); keep the compact grid the language side sees."""
        positional = "grid_thw" not in kwargs and len(args) > 1
        language = args[1] if positional else kwargs.get("grid_thw")
        self._language_grid = language
        if language is None:
            return args, kwargs
        real = self.call.vision_grid if self.call is not None else None
        real = language if real is None else real.to(language.device)
        pixels = args[0] if args else kwargs["hidden_states"]
        check_vision_grids(pixels.shape[0], real, language, self._merge, "token reducer")
        if positional:
            return (args[0], real, *args[2:]), kwargs
        return args, {**kwargs, "grid_thw": real}

    def _qwen_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Reduce each image's merger output (and deepstack levels) from n to the compact grid's K tokens."""
        language, self._language_grid = self._language_grid, None
        real = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if real is None or language is None:
            return output
        if not hasattr(output, "pooler_output"):
            raise TypeError("token reducers need the vision tower's return_dict output")
        started = time.perf_counter()
        unit = self._merge * self._merge
        sizes = (real.prod(-1) // unit).tolist()
        budgets = (language.prod(-1) // unit).tolist()
        scores = self._qwen_scores(module, real, unit) if self.reducer.needs_attention else [None] * len(sizes)
        self.last_scores = scores if self.reducer.needs_attention else None
        tokens = output.pooler_output.split(sizes)
        reductions = [self._reduce(t, int(k), s) for t, k, s in zip(tokens, budgets, scores)]
        self.last_reductions = reductions
        output.pooler_output = torch.cat([r.apply(t) for r, t in zip(reductions, tokens)])
        deepstack = getattr(output, "deepstack_features", None)
        if deepstack:  # Qwen3-VL: every deepstack level gets the same selection / merge as the main tokens
            output.deepstack_features = [torch.cat([r.apply(t) for r, t in zip(reductions, level.split(sizes))])
                                         for level in deepstack]
        self.last_selection_s = time.perf_counter() - started
        return output

    def _qwen_scores(self, visual: nn.Module, real: torch.Tensor, unit: int) -> list[torch.Tensor]:
        """FasterVLM's stand-in on Qwen-VL: mean attention each patch receives from its image's patches in the last
        vision block, summed over each merge group -> one score per token, per image (raster order)."""
        capture = self._capture
        received = received_attention(capture.module, capture.input("hidden_states", 0),
                                      capture.input("cu_seqlens", 1), capture.input("position_embeddings", 2))
        capture.clear()
        per_unit = received.reshape(-1, unit)
        if self.family == "qwen2_5_vl":  # the blocks see merge groups in window order; put them back
            from transformers.vision_utils import get_vision_window_index

            window_index, _ = get_vision_window_index(real, spatial_merge_size=visual.spatial_merge_size,
                                                      window_size=visual.window_size, patch_size=visual.patch_size)
            per_unit = per_unit[torch.argsort(window_index.to(per_unit.device))]
        patches = real.prod(-1).tolist()
        token_scores = per_unit.sum(dim=1).split([p // unit for p in patches])
        return [s / p for s, p in zip(token_scores, patches)]

    # ------------------------------------------------------------------------------------------------- LLaVA
    def _attach_llava(self) -> None:
        config = self.model.config
        if config.vision_feature_select_strategy != "default":
            raise ValueError("token reducers on LLaVA need vision_feature_select_strategy='default' (patch tokens "
                             f"only), got {config.vision_feature_select_strategy!r}")
        attention = self._llava_attention_layer() if self.reducer.needs_attention else None  # may refuse: hook after
        projector = get_family(self.family).get_module(self.model, "projector")
        self._handles.append(projector.register_forward_hook(self._llava_post))
        if attention is not None:
            self._capture = InputCapture(attention)

    def _llava_attention_layer(self) -> nn.Module:
        layer = self.model.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError(f"{self.reducer.name} reads [CLS] attention at one vision_feature_layer, got {layer!r}")
        tower = get_family(self.family).get_module(self.model, "vision")
        if getattr(getattr(tower, "embeddings", None), "class_embedding", None) is None:
            raise ValueError(f"{self.reducer.name} needs a vision tower with a [CLS] token (CLIP); "
                             f"{type(tower).__name__} has none")
        blocks = tower.encoder.layers
        index = (layer if layer >= 0 else len(blocks) + 1 + layer) - 1  # hidden_states[i] is the output of block i-1
        if not 0 <= index < len(blocks):
            raise ValueError(f"vision_feature_layer {layer} is not the output of an attention block")
        return blocks[index].self_attn

    def _llava_post(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        placeholders = self.call.placeholders if self.call is not None else None
        if placeholders is None:
            return output
        images, n = output.shape[0], output.shape[1]
        if placeholders % images:
            raise BudgetError(f"{placeholders} image placeholder tokens cannot be split evenly over {images} images: "
                              "a reducer uses one budget per call")
        started = time.perf_counter()
        scores: Any = [None] * images
        if self.reducer.needs_attention:
            scores = cls_attention(self._capture.module, self._capture.input("hidden_states", 0))
            self._capture.clear()
            if scores.shape[1] != n:
                raise ValueError(f"[CLS] attention covers {scores.shape[1]} patches, the projector gave {n} tokens")
            self.last_scores = list(scores)
        budget = placeholders // images
        self.last_reductions = [self._reduce(output[i], budget, scores[i]) for i in range(images)]
        reduced = torch.stack([r.apply(output[i]) for i, r in enumerate(self.last_reductions)])
        self.last_selection_s = time.perf_counter() - started
        return reduced


def reduce_tokens(model: nn.Module, reducer: str | TokenReducer | type[TokenReducer]) -> ReducerHandle:
    """Attach `reducer` to `model` (a Hugging Face VLM or a PEFT model around one) until `handle.remove()`."""
    return ReducerHandle(model, reducer)


@contextmanager
def apply_reducer(model: nn.Module, reducer: str | TokenReducer | type[TokenReducer]) -> Iterator[ReducerHandle]:
    """`with apply_reducer(model, "divprune"): ...`: the reducer is attached inside the block only."""
    handle = ReducerHandle(model, reducer)
    try:
        yield handle
    finally:
        handle.remove()
