"""Training-free token reducers: prune or merge each image's visual tokens to a budget K after the projector.

Three algorithms, registered in `adaptune.registry.REDUCERS` where they are defined (`adaptune info` lists them):

- `fastervlm` (`pruning.py`): keep the K tokens with the highest [CLS] attention (a documented stand-in on Qwen-VL);
- `divprune` (`pruning.py`): greedy max-min diversity selection on the projected tokens;
- `tome` (`merging.py`): repeated bipartite soft matching, size-weighted merges until K remain.

`base.py` is the pure-tensor interface (`TokenReducer`, `Reduction`), `attention.py` the exact attention scores,
`attach.py` the model plumbing for Qwen3-VL, Qwen2.5-VL and LLaVA. The budget comes from the batch: a
`BudgetProcessor` batch with K placeholders per image (the same inputs TokenFLEX reads).

    from adaptune.budget import BudgetProcessor, apply_reducer, reduce_tokens
    batch = BudgetProcessor(processor)(images=imgs, text=prompts, budget=9, return_tensors="pt", padding=True)
    with apply_reducer(model, "divprune"):
        model.generate(**batch, max_new_tokens=8)
    handle = reduce_tokens(model, "tome")   # persistent, e.g. for an evaluation loop; handle.remove() detaches
"""

from __future__ import annotations

from ...registry import REDUCERS
from .attach import ReducerHandle, apply_reducer, get_reducer, reduce_tokens
from .base import REDUCER_FAMILIES, Reduction, TokenReducer
from .merging import ToMe, bipartite_merge_groups
from .pruning import DivPrune, FasterVLM, max_min_diverse

__all__ = ["REDUCERS", "REDUCER_FAMILIES", "DivPrune", "FasterVLM", "ReducerHandle", "Reduction", "ToMe",
           "TokenReducer", "apply_reducer", "bipartite_merge_groups", "get_reducer", "max_min_diverse",
           "reduce_tokens"]
