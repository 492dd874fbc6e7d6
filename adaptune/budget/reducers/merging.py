"""Merging reducer: `tome`, ToMe-style bipartite soft matching ("Token Merging: Your ViT But Faster", Bolya et al.
ICLR 2023), applied once to an image's projected visual tokens until K remain.

One round on the current m tokens (in raster order of their surviving token):
1. split alternately: A = positions 0, 2, 4, ..., B = positions 1, 3, 5, ...;
2. each A token's best match is the B token with the highest cosine similarity (ties: the lower B);
3. the r = min(m - K, |A|) A tokens with the most similar matches (ties: the lower A) are merged into their B
   partners with size-weighted averages (sizes = how many original tokens each current token stands for);
4. the unmerged A tokens and all B tokens survive, in raster order of their position.
Rounds repeat until K tokens remain (each round removes r >= 1 tokens while m > K >= 1).

A size-weighted average of averages is the plain mean of the original tokens, so the result is a merge assignment
(`Reduction.assign`): each output token is the mean of its group, and the same groups can be applied to any other
per-token features (Qwen3-VL deepstack levels).
"""

from __future__ import annotations

import math

import torch

from ...registry import REDUCERS
from .base import Reduction, TokenReducer, cosine_similarity_matrix


def bipartite_merge_groups(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """Repeated bipartite soft matching of `tokens` `(n, d)` down to `k`; the group `0..k-1` of each token."""
    n = tokens.shape[0]
    current = tokens.float()
    sizes = torch.ones(n, dtype=torch.float32, device=tokens.device)
    group = torch.arange(n, device=tokens.device)  # original token -> current position
    while current.shape[0] > k:
        m = current.shape[0]
        a_pos = torch.arange(0, m, 2, device=tokens.device)
        b_pos = torch.arange(1, m, 2, device=tokens.device)
        r = min(m - k, math.ceil(m / 2))
        similarity = cosine_similarity_matrix(current[a_pos], current[b_pos])
        best, partner = similarity.max(dim=1)  # max returns the first (lowest) B index on ties
        order = torch.sort(best, descending=True, stable=True).indices
        merged_a = a_pos[order[:r]]
        into = b_pos[partner[order[:r]]]
        weighted = current * sizes[:, None]
        weighted.index_add_(0, into, weighted[merged_a])
        sizes = sizes.clone()
        sizes.index_add_(0, into, sizes[merged_a])
        survive = torch.ones(m, dtype=torch.bool, device=tokens.device)
        survive[merged_a] = False
        destination = torch.arange(m, device=tokens.device)
        destination[merged_a] = into
        new_index = torch.cumsum(survive.long(), 0) - 1
        group = new_index[destination[group]]
        sizes = sizes[survive]
        current = weighted[survive] / sizes[:, None]
    return group


@REDUCERS.register("tome")
class ToMe(TokenReducer):
    """Bipartite soft matching (alternate A/B split, cosine similarity), size-weighted merges, rounds until K."""

    name = "tome"
    kind = "merge"
    description = ("ToMe: repeated bipartite soft matching on the projected tokens (alternate A/B split, cosine "
                   "similarity), size-weighted merges until K remain, in raster order of the surviving tokens")

    def reduce(self, tokens: torch.Tensor, budget: int, scores: torch.Tensor | None) -> Reduction:
        return Reduction(n=tokens.shape[0], assign=bipartite_merge_groups(tokens, budget))
