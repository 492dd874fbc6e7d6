"""Pruning reducers: keep K of an image's n visual tokens, drop the rest (FasterVLM, DivPrune).

- `fastervlm` (FasterVLM, "[CLS] Attention is All You Need for Training-Free Visual Token Pruning", Zhang et al.
  2024): keep the K tokens with the highest attention score. The score is computed by the model plumbing
  (`attention.py`): on LLaVA, the [CLS] query's attention to each patch, averaged over heads, at the vision encoder
  layer whose output LLaVA reads (`vision_feature_layer`); Qwen-VL towers have no [CLS] token, so there the score is
  a stand-in (see `FasterVLM.description`).
- `divprune` (DivPrune, "Diversity-based Visual Token Pruning for Large Multimodal Models", Alvar et al. CVPR 2025):
  max-min diversity on the projected tokens. Cosine distance `1 - cos`; the first token is the one whose minimum
  distance to all the others is largest; then, repeatedly, the token whose minimum distance to the tokens already
  selected is largest. Ties go to the lower index.

Both return the kept indices in raster order, so the language model reads the surviving tokens in the order they had
in the image.
"""

from __future__ import annotations

import torch

from ...registry import REDUCERS
from .base import Reduction, TokenReducer, cosine_similarity_matrix, top_k_stable


@REDUCERS.register("fastervlm")
class FasterVLM(TokenReducer):
    """Keep the K tokens with the highest [CLS] attention (LLaVA) or received attention (Qwen-VL stand-in)."""

    name = "fastervlm"
    kind = "prune"
    needs_attention = True
    description = ("FasterVLM: keep the K tokens with the highest [CLS] attention (mean over heads) at LLaVA's "
                   "vision_feature_layer; Qwen-VL has no [CLS], so there: mean attention each patch receives from "
                   "the patches of its image in the last vision block, summed over each 2x2 merge group (a stand-in)")

    def reduce(self, tokens: torch.Tensor, budget: int, scores: torch.Tensor | None) -> Reduction:
        keep = top_k_stable(scores.float(), budget)
        return Reduction(n=tokens.shape[0], keep=keep.to(tokens.device))


def max_min_diverse(distance: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max-min selection of `k` of the `n` items with the pairwise `distance` matrix; order of selection."""
    n = distance.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    off_diagonal = distance.masked_fill(torch.eye(n, dtype=torch.bool, device=distance.device), float("inf"))
    first = int(torch.argmax(off_diagonal.min(dim=1).values))  # argmax returns the first (lowest) index on ties
    chosen = [first]
    nearest = distance[first].clone()  # distance from each item to its nearest chosen item
    taken = torch.zeros(n, dtype=torch.bool, device=distance.device)
    taken[first] = True
    for _ in range(k - 1):
        candidate = int(torch.argmax(nearest.masked_fill(taken, float("-inf"))))
        chosen.append(candidate)
        taken[candidate] = True
        nearest = torch.minimum(nearest, distance[candidate])
    return torch.tensor(chosen, dtype=torch.long)


@REDUCERS.register("divprune")
class DivPrune(TokenReducer):
    """Max-min diversity selection of K tokens (cosine distance on the projected tokens)."""

    name = "divprune"
    kind = "prune"
    description = ("DivPrune: greedy max-min diversity selection of K projected tokens (cosine distance; start "
                   "from the token farthest from its nearest neighbour), kept in raster order")

    def reduce(self, tokens: torch.Tensor, budget: int, scores: torch.Tensor | None) -> Reduction:
        distance = 1.0 - cosine_similarity_matrix(tokens)
        keep = torch.sort(max_min_diverse(distance, budget)).values
        return Reduction(n=tokens.shape[0], keep=keep.to(tokens.device))
