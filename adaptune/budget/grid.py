"""Visual-token budgets: how a budget becomes a token grid, and how training draws one.

A budget is either a token count `N` (an int) or an explicit grid `(h, w)`. The processor (`placeholders.py`) and the
budget methods (TokenFLEX, the token reducers) both turn a count into a grid with `resolve_grid`, so they always agree:

- the grid must fit the image's vision patch grid (`h <= H`, `w <= W`): a budget can never ask for more rows or
  columns than the encoder produced (pooling only shrinks; the resize-up step only rounds the grid to a multiple);
- among the factorisations `h * w == N` that fit, the one whose aspect ratio is closest to the patch grid's wins;
  ties go to the more square one, then to the smaller `h`.

    resolve_grid(64, (27, 27))   -> (8, 8)
    resolve_grid(8, (4, 4))      -> (2, 4)
    resolve_grid(7, (4, 4))      -> BudgetError (7 = 1 x 7 does not fit 4 columns)

Training draws one budget per batch with `BudgetSampler` (the paper draws 64/144/256 at 2:3:5).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Budget = int | tuple[int, int]


class BudgetError(ValueError):
    """A visual-token budget that the image (or the model) cannot provide; the message says why and what fits."""


def _fitting_examples(grid_hw: tuple[int, int]) -> str:
    side = min(grid_hw)
    squares = sorted({n * n for n in (1, 2, side // 2, side) if n >= 1})
    return f"square budgets that fit: {', '.join(map(str, squares))}; max {grid_hw[0] * grid_hw[1]}"


def resolve_grid(budget: Budget, grid_hw: tuple[int, int]) -> tuple[int, int]:
    """The `(h, w)` token grid for `budget` on an image whose vision patch grid is `grid_hw = (H, W)`."""
    height, width = int(grid_hw[0]), int(grid_hw[1])
    if isinstance(budget, (tuple, list)):
        if len(budget) != 2:
            raise BudgetError(f"a grid budget must be (rows, cols), got {budget!r}")
        h, w = int(budget[0]), int(budget[1])
        if not (1 <= h <= height and 1 <= w <= width):
            raise BudgetError(f"budget grid {h}x{w} does not fit the image's {height}x{width} vision patch grid "
                              f"({_fitting_examples((height, width))})")
        return h, w
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise BudgetError(f"budget must be an int token count or an (h, w) tuple, got {budget!r}")
    if budget < 1:
        raise BudgetError(f"budget must be at least 1 visual token, got {budget}")
    fits = [(h, budget // h) for h in range(1, budget + 1)
            if budget % h == 0 and h <= height and budget // h <= width]
    if not fits:
        raise BudgetError(f"budget {budget} cannot be laid out on the image's {height}x{width} vision patch grid: "
                          f"it needs h * w = {budget} with h <= {height} and w <= {width} "
                          f"({_fitting_examples((height, width))})")
    target = math.log(height / width)
    return min(fits, key=lambda hw: (round(abs(math.log(hw[0] / hw[1]) - target), 9),
                                     round(abs(math.log(hw[0] / hw[1])), 9), hw[0]))


def budget_tokens(budget: Budget) -> int:
    """The number of visual tokens a budget costs per image."""
    if isinstance(budget, (tuple, list)):
        return int(budget[0]) * int(budget[1])
    return int(budget)


class BudgetSampler:
    """Draws one budget per call from `budgets` with relative `weights`, reproducibly from `seed`.

    >>> sampler = BudgetSampler([4, 9, 16], [2, 3, 5], seed=0)
    >>> [sampler() for _ in range(6)]
    [16, 16, 9, 9, 16, 9]
    """

    def __init__(self, budgets: Sequence[int], weights: Sequence[float] | None = None, seed: int = 0) -> None:
        if not budgets:
            raise ValueError("BudgetSampler needs at least one budget")
        weights = list(weights) if weights else [1.0] * len(budgets)
        if len(weights) != len(budgets):
            raise ValueError(f"{len(budgets)} budgets but {len(weights)} weights")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"budget weights must be >= 0 with a positive sum, got {weights}")
        self.budgets = [int(b) for b in budgets]
        self.weights = [float(w) for w in weights]
        self._rng = random.Random(seed)

    def __call__(self) -> int:
        return self._rng.choices(self.budgets, weights=self.weights, k=1)[0]
