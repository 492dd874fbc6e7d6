"""KV reuse across the two turns: the second `generate` prefills only the tokens the first one did not see.

Why: the resolution policy's second turn is the first conversation extended (system prompt with the tool schema, user
turn with the low image, the model's own tool call, then a tool turn with the full image). Re-encoding it from scratch
made the policy's wall time per answer 1.42x always-full's on the embedded default, although it spends fewer visual
tokens. Keeping the first call's KV cache and prefilling only the new tail removes that repeated prefill. Measured
(`benchmarks/bench_resolution_policy.py`, 2 CPU cores): policy / always-full wall time 1.51 -> 1.21 on the default
(where decoding, not prefill, is what the policy pays for) and 0.62 -> 0.555 on a 4x larger Qwen3-VL with 768 px
images.

How (transformers' cache API, no model code changed):
1. `PrefixCache.start` hands the first `generate` a `DynamicCache`; `keep` records the ids it fed (prompt +
   completion, left-padded) and which of them are padding.
2. For the continuation of rows `extends`, `continuation` compares each row's new ids with its recorded ids token by
   token: the common prefix is exactly reusable (causal attention: a prefix's keys and values do not depend on what
   follows; M-RoPE positions of a prefix do not either). The rows' caches are moved into one left-padded cache of `C`
   columns, `C` chosen so that every row's uncached tail holds its divergent part and never cuts an image's
   placeholders in two.
3. `generate` gets the FULL new ids and mask with that cache: it prefills only the last `T - C` columns, computes the
   3-D positions over the full ids (Qwen-VL's `_prepare_position_ids_for_generation` does this when the uncached tail
   holds new images), and takes the new images' features precomputed (`mm_encoder_outputs`, only the images whose
   placeholders are in the tail; the cached ones were encoded by the first call).

Anything it cannot do exactly (a family without `mm_encoder_outputs` / `mm_token_type_ids`, cache layers that are not
plain `DynamicLayer`s, budget hooks on the model (token reducers, TokenFLEX), a placeholder count that does not match
the images) falls back to re-encoding, with the reason logged once.

    cache = PrefixCache()
    first = generate_texts(model, processor, texts1, images1, cache=cache)
    second = generate_texts(model, processor, texts2, images2, cache=cache, extends=[0, 3])   # rows 0 and 3 go on
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch

from .inputs import budget_listeners, image_token_id

log = logging.getLogger("adaptune")
_LOGGED: set[str] = set()


def _fallback(reason: str) -> None:
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        log.warning("two-turn KV reuse off, the second turn re-encodes the conversation: %s", reason)


def unsupported_reason(model: torch.nn.Module, batch: dict[str, Any]) -> str | None:
    """Why this model / processor batch cannot continue from a kept cache (None: it can)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if budget_listeners(base) or budget_listeners(model):
        return "budget hooks (a token reducer or TokenFLEX) are attached to the model"
    if "mm_encoder_outputs" not in inspect.signature(base.forward).parameters:
        return f"{type(base).__name__}.forward takes no precomputed image features (mm_encoder_outputs)"
    if not hasattr(base, "get_image_features") or image_token_id(base.config) is None:
        return f"{type(base).__name__} has no get_image_features / image placeholder id"
    if "image_grid_thw" not in batch or "mm_token_type_ids" not in batch:
        return "the processor returns no image_grid_thw / mm_token_type_ids (needed for M-RoPE over the full ids)"
    return None


class PrefixCache:
    """The KV cache of one batched `generate` call and the ids it fed, kept for calls that extend its rows."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.ids: torch.Tensor | None = None       # [B, L]: the tokens whose keys / values the cache holds
        self.real: torch.Tensor | None = None      # [B, L]: False on left padding
        self.reused_tokens = 0                     # prompt tokens not prefilled again (all continuations so far)
        self.prefilled_tokens = 0                  # prompt tokens prefilled by the continuations

    def start(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """Extra `generate` kwargs for a call to keep (a fresh `DynamicCache`), or {} when it cannot be reused."""
        from transformers import DynamicCache

        self.cache = self.ids = self.real = None
        reason = unsupported_reason(model, batch)
        if reason:
            _fallback(reason)
            return {}
        self.cache = DynamicCache(config=model.config)
        return {"cache": self.cache}

    def keep(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Record what the call fed: `sequences` (prompt + generated) up to the cache's length."""
        if self.cache is None:
            return
        from transformers.cache_utils import DynamicLayer

        if any(type(layer) is not DynamicLayer for layer in self.cache.layers):
            _fallback("the cache has layers other than DynamicLayer (sliding window, linear attention)")
            self.cache = None
            return
        length = self.cache.get_seq_length()
        grown = torch.ones(sequences.shape[0], sequences.shape[1] - attention_mask.shape[1],
                           dtype=attention_mask.dtype, device=attention_mask.device)
        self.ids = sequences[:, :length]
        self.real = torch.cat([attention_mask, grown], dim=1)[:, :length].bool()

    def continuation(self, model: torch.nn.Module, batch: dict[str, Any], extends: Sequence[int | None]
                     ) -> dict[str, Any] | None:
        """`generate` kwargs that replace `pixel_values` for a batch whose row b extends kept row `extends[b]`
        (None: a row with nothing kept), or None to re-encode (the reason is logged)."""
        if self.cache is None or self.ids is None or self.real is None:
            return None
        reason = unsupported_reason(model, batch)
        if reason:
            _fallback(reason)
            return None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        if len(extends) != ids.shape[0]:
            raise ValueError(f"extends names {len(extends)} rows for a batch of {ids.shape[0]}")
        total = ids.shape[1]
        lengths = mask.sum(1).tolist()
        if not all(bool(mask[b, total - n:].all()) for b, n in enumerate(lengths)):
            _fallback("the batch is not left-padded")
            return None
        pad_id = image_token_id(base.config)
        rows = [ids[b, total - n:] for b, n in enumerate(lengths)]
        spans = [_runs(row == pad_id) for row in rows]
        common = []
        for b, r in enumerate(extends):
            if r is None:
                common.append(0)
                continue
            old = self.ids[r][self.real[r]]
            n = min(len(old), len(rows[b]) - 1)  # at least one token left to prefill
            diff = (old[:n] != rows[b][:n]).nonzero()
            common.append(int(diff[0]) if len(diff) else n)
        tail = max(n - c for n, c in zip(lengths, common, strict=True))
        while True:  # never split an image's placeholders between the cache and the tail
            cut = [max(0, n - tail) for n in lengths]
            inside = [cut[b] - s for b in range(len(rows)) for s, e in spans[b] if s < cut[b] < e]
            if not inside:
                break
            tail += max(inside)
        kept = total - tail
        if kept <= 0:
            return None
        # image i of the flat processor order <-> span i in row-major order
        grid = batch["image_grid_thw"]
        if sum(len(s) for s in spans) != grid.shape[0]:
            _fallback("the image placeholder runs do not match the images (one placeholder run per image expected)")
            return None
        merge = int(getattr(getattr(base.config, "vision_config", None), "spatial_merge_size", 2)) ** 2
        patches = grid.prod(-1)
        offsets = torch.cat([patches.new_zeros(1), patches.cumsum(0)]).tolist()
        new_images, index = [], 0
        for b in range(len(rows)):
            for s, e in spans[b]:
                if int(grid[index].prod()) != (e - s) * merge:
                    _fallback("image placeholder counts differ between images (a budget processor?)")
                    return None
                if s >= cut[b]:
                    new_images.append(index)
                index += 1
        if not new_images:  # M-RoPE would reuse the first call's rope deltas, which belong to another batch
            _fallback("the continuation holds no new image")
            return None
        layers = []
        device = self.cache.layers[0].keys.device
        for layer in self.cache.layers:
            k_old, v_old = layer.keys, layer.values
            k = k_old.new_zeros(len(rows), k_old.shape[1], kept, k_old.shape[3])
            v = v_old.new_zeros(len(rows), v_old.shape[1], kept, v_old.shape[3])
            for b, r in enumerate(extends):
                if r is None or cut[b] == 0:
                    continue
                start = int((~self.real[r]).sum())  # the kept row's left padding
                k[b, :, kept - cut[b]:] = k_old[r, :, start:start + cut[b]]
                v[b, :, kept - cut[b]:] = v_old[r, :, start:start + cut[b]]
            layers.append((k, v))
        from transformers import DynamicCache

        cache = DynamicCache(layers, config=model.config)
        pixels = torch.cat([batch["pixel_values"][offsets[i]:offsets[i + 1]] for i in new_images])
        features = base.get_image_features(pixel_values=pixels.to(device), image_grid_thw=grid[new_images],
                                           return_dict=True)
        kwargs: dict[str, Any] = {"cache": cache, "mm_encoder_outputs": {"image": features}}
        self.reused_tokens += sum(cut)
        self.prefilled_tokens += sum(lengths) - sum(cut)
        return kwargs


def _runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D bool tensor."""
    out, start = [], None
    for i, f in enumerate(flags.tolist() + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i))
            start = None
    return out


__all__ = ["PrefixCache", "unsupported_reason"]
