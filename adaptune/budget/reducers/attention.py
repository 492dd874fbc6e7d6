"""Exact attention scores for the attention-based reducer (`fastervlm`), recomputed from a block's own inputs.

The vision towers run with SDPA (or flash) attention, which never materialises the attention weights, and asking for
them (`output_attentions`) would change the implementation the model runs. Instead `InputCapture` keeps the inputs
of one attention module (a forward pre-hook), and the scores are recomputed from them with that module's own
projections, rotary application and scale, the way the module itself computes its logits:

- `cls_attention` (LLaVA / CLIP): the [CLS] query's softmax attention over all keys, averaged over heads, read at the
  patch keys -> `(images, patches)`;
- `received_attention` (Qwen-VL): for each patch, the attention it receives summed over the queries of its attention
  segment (`cu_seqlens`: one image in a full-attention block; a window in a Qwen2.5-VL windowed block), averaged over
  heads -> `(patches,)` in the block's patch order. Dividing by the image's patch count gives the mean attention the
  patch receives from all patches of its image (queries outside its segment give it zero).

Heads are processed one at a time, so memory stays at one `(L, L)` matrix per segment.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import torch
from torch import nn


class InputCapture:
    """A forward pre-hook that keeps the positional and keyword inputs of the latest call of `module`."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.args: tuple = ()
        self.kwargs: dict[str, Any] = {}
        self.called = False
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.args, self.kwargs, self.called = args, dict(kwargs), True

    def input(self, name: str, position: int) -> Any:
        """The argument `name` of the captured call (keyword, else the `position`-th positional)."""
        if not self.called:
            raise RuntimeError(f"{type(self.module).__name__} was not called: no attention inputs to score")
        if name in self.kwargs:
            return self.kwargs[name]
        if position < len(self.args):
            return self.args[position]
        raise RuntimeError(f"{type(self.module).__name__} was called without {name!r}")

    def clear(self) -> None:
        self.args, self.kwargs, self.called = (), {}, False

    def remove(self) -> None:
        self.clear()
        self._handle.remove()


@torch.no_grad()
def cls_attention(attn: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """CLIP-style attention (`q_proj`, `k_proj`, `num_heads`, `head_dim`, `scale`) on `(B, 1 + P, d)` inputs whose
    row 0 is [CLS]: the [CLS] query's attention to each of the P patches, mean over heads -> `(B, P)`."""
    batch, length, _ = hidden_states.shape
    heads, head_dim = int(attn.num_heads), int(attn.head_dim)
    query = attn.q_proj(hidden_states[:, :1]).view(batch, 1, heads, head_dim).transpose(1, 2).float()
    key = attn.k_proj(hidden_states).view(batch, length, heads, head_dim).transpose(1, 2).float()
    weights = torch.softmax(query @ key.transpose(-1, -2) * float(attn.scale), dim=-1)  # (B, heads, 1, 1 + P)
    return weights[:, :, 0, 1:].mean(dim=1)


@torch.no_grad()
def received_attention(attn: nn.Module, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                       position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Qwen-VL vision attention (`qkv`, `num_heads`, `scaling`, the module's `apply_rotary_pos_emb_vision`) on
    packed `(L, d)` inputs: per patch, the attention received summed over the queries of its segment, mean over
    heads -> `(L,)` float32, in the block's patch order."""
    length = hidden_states.shape[0]
    heads = int(attn.num_heads)
    query, key, _ = attn.qkv(hidden_states).reshape(length, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision  # the model's own rotary
    cos, sin = position_embeddings
    query, key = rotary(query, key, cos, sin)
    query, key = query.float(), key.float()
    scaling = float(attn.scaling)
    received = torch.zeros(length, dtype=torch.float32, device=hidden_states.device)
    bounds = cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        for head in range(heads):
            q, k = query[start:end, head], key[start:end, head]
            weights = torch.softmax(q @ k.T * scaling, dim=-1)
            received[start:end] += weights.sum(dim=0)
    return received / heads
