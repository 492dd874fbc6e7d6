"""The token-reducer interface: per image, visual tokens in, a `Reduction` (kept indices or a merge assignment) out.

A reducer is pure tensor code so each algorithm can be checked on hand-made inputs: it sees one image's projected
visual tokens `(n, d)` in raster order of the image's token grid (row by row), optionally one attention score per
token `(n,)`, and a budget `K` in 1..n, and returns a `Reduction`:

- pruning: `keep`, the `K` kept token indices in ascending (raster) order;
- merging: `assign`, for each of the `n` tokens the output token `0..K-1` it is averaged into; output tokens are
  numbered in the raster order of the tokens that survive, and each output is the plain mean of its group (what
  repeated size-weighted averaging gives).

`Reduction.apply(features)` performs it on any per-token features of the same image (the projected tokens, and on
Qwen3-VL each deepstack level, so all are reduced by the same selection or merge). Attaching a reducer to a model is
`attach.py`'s job; this module knows nothing about models.

    reducer = REDUCERS.get("divprune")()
    reduction = reducer(tokens, budget=9)          # tokens: (16, d)
    reduction.apply(tokens).shape                  # (9, d)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..grid import BudgetError

REDUCER_FAMILIES: tuple[str, ...] = ("qwen3_vl", "qwen2_5_vl", "llava")


@dataclass(frozen=True)
class Reduction:
    """How `n` tokens of one image become `size` tokens: `keep` (pruning) or `assign` (merging), exactly one set."""

    n: int
    keep: torch.Tensor | None = None
    assign: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.assign is None):
            raise ValueError("a Reduction holds either kept indices or a merge assignment")
        if self.assign is not None and self.assign.shape != (self.n,):
            raise ValueError(f"a merge assignment needs one group per token ({self.n}), got {tuple(self.assign.shape)}")

    @property
    def size(self) -> int:
        """The number of tokens after the reduction."""
        if self.keep is not None:
            return int(self.keep.numel())
        return int(self.assign.max()) + 1 if self.n else 0

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """`(n, ...)` per-token features of the image -> `(size, ...)`: kept rows, or the mean of each group."""
        if features.shape[0] != self.n:
            raise ValueError(f"this reduction is for {self.n} tokens, got features for {features.shape[0]}")
        if self.keep is not None:
            return features.index_select(0, self.keep.to(features.device))
        assign = self.assign.to(features.device)
        sums = features.new_zeros((self.size, *features.shape[1:])).index_add_(0, assign, features)
        counts = torch.bincount(assign, minlength=self.size).to(features.dtype)
        return sums / counts.reshape(-1, *([1] * (features.dim() - 1)))


class TokenReducer:
    """Base class: subclasses set the class attributes, implement `reduce`, and register with `@REDUCERS.register`.

    `__call__` checks the inputs (budget in 1..n, scores present when `needs_attention`) and calls `reduce`.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Literal["prune", "merge"]] = "prune"
    needs_attention: ClassVar[bool] = False
    families: ClassVar[tuple[str, ...]] = REDUCER_FAMILIES
    description: ClassVar[str] = ""

    def __call__(self, tokens: torch.Tensor, budget: int, scores: torch.Tensor | None = None) -> Reduction:
        if tokens.dim() != 2:
            raise ValueError(f"{self.name}: tokens must be (n, d) for one image, got shape {tuple(tokens.shape)}")
        n = int(tokens.shape[0])
        if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= n:
            raise BudgetError(f"{self.name}: the budget must be an int from 1 to the image's {n} visual tokens "
                              f"(a reducer only removes tokens), got {budget!r}")
        if self.needs_attention:
            if scores is None:
                raise ValueError(f"{self.name} needs one attention score per token")
            if scores.shape != (n,):
                raise ValueError(f"{self.name}: expected {n} scores, got shape {tuple(scores.shape)}")
        return self.reduce(tokens, budget, scores)

    def reduce(self, tokens: torch.Tensor, budget: int, scores: torch.Tensor | None) -> Reduction:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`(n, d)`, `(m, d)` -> `(n, m)` cosine similarities in float32 (`b` defaults to `a`; zero vectors give 0)."""
    a = a.float()
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if b is None:
        return a @ a.T
    b = b.float()
    return a @ (b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T


def top_k_stable(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` largest scores, ties to the lower index, returned in ascending (raster) order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:k]).values
