"""`FlexProjectorConfig`: the PEFT config of TokenFLEX (one projector for many visual-token budgets).

What the fields mean and which are filled in automatically: `target_modules` defaults to the family's projector
(LLaVA, SmolVLM) or vision tower (Qwen-VL: the tower is wrapped so the projector can see the patch grid and the
deepstack taps); `base_family`, `vision_hidden_size` and `text_hidden_size` are recorded when the adapter is created and
checked when it is loaded, so an adapter saved on one model refuses another with a message saying what differs.

    from adaptune.methods.flex_projector import FlexProjectorConfig
    config = FlexProjectorConfig()                                      # the paper's 64/144/256 at 2:3:5
    config = FlexProjectorConfig(budgets=[4, 9, 16], budget_weights=[2, 3, 5])   # a 128 px tiny model

`budgets` / `budget_weights` are the single source of TokenFLEX's training budgets: the method's objective draws
one per training batch from them on every task, and `flex_vqa` evaluates at `budgets` unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from .._peft_ext import add_peft_type

DEEPSTACK_MODES = ("pool", "zero")


@dataclass
class FlexProjectorConfig(PeftConfig):
    """TokenFLEX: a VLM projector made of pool-to-budget + LayerNorm + SwiGLU (docs/methods.md#flex_projector)."""

    budgets: list[int] = field(default_factory=lambda: [64, 144, 256], metadata={
        "help": "Visual-token budgets per image drawn during training (one per batch, by the method's objective, on "
                "any task) and evaluated by flex_vqa unless its eval_budgets say otherwise. Default: the paper's "
                "64/144/256 (real checkpoints at their usual resolutions). A budget must fit the image's token grid: "
                "a 128 px image on a tiny Qwen3-VL has 16 tokens, so its recipes set 4/9/16 (the same ratios)."})
    budget_weights: list[float] = field(default_factory=lambda: [2.0, 3.0, 5.0], metadata={
        "help": "Relative sampling weight of each entry of `budgets` (paper: 2:3:5)."})
    hidden_mult: int = field(default=3, metadata={
        "help": "SwiGLU width as a multiple of the vision width d: two Linear(d -> mult*d), then Linear(mult*d -> "
                "d_llm)."})
    per_budget_norm: bool = field(default=False, metadata={
        "help": "Give each entry of `budgets` its own elementwise scale and shift after the shared LayerNorm "
                "(2 x vision width parameters per budget, zero-initialised, so training starts from the shared "
                "projector). The pooled statistics differ between a 2 x 2 and a 4 x 4 grid; this lets each budget "
                "re-centre them. Budgets must then be distinct, and a budget outside `budgets` is refused at run "
                "time (it has no trained scale)."})
    deepstack: Literal["pool", "zero"] = field(default="pool", metadata={
        "help": "Qwen3-VL deepstack taps: 'pool' resizes/pools each tap's patch grid to (2h, 2w) with the same "
                "resize + average pooling and feeds the frozen deepstack merger, so it lands on the same h x w token "
                "grid; 'zero' feeds zeros (the text model then gets no deepstack signal)."})
    target_modules: list[str] | str | None = field(default=None, metadata={
        "help": "Module to wrap. Default: the family's projector (LLaVA, SmolVLM) or vision tower (Qwen-VL)."})
    target_parameters: list[str] | None = field(default=None, metadata={
        "help": "Unused by TokenFLEX (PEFT requires the field)."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={
        "help": "Unused by TokenFLEX (kept for PEFT's target matching)."})
    base_family: str | None = field(default=None, metadata={
        "help": "Model family the adapter was created on (recorded automatically, checked on load)."})
    vision_hidden_size: int | None = field(default=None, metadata={
        "help": "Input width of the projector (recorded automatically, checked on load)."})
    text_hidden_size: int | None = field(default=None, metadata={
        "help": "Output width of the projector = the text model's hidden size (recorded automatically, checked on "
                "load)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = add_peft_type("flex_projector")
        self.budgets = [int(b) for b in self.budgets]
        self.budget_weights = [float(w) for w in self.budget_weights]
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be a non-empty list of positive token counts, got {self.budgets}")
        if len(self.budget_weights) != len(self.budgets):
            raise ValueError(f"budget_weights needs one weight per budget: {len(self.budgets)} budgets, "
                             f"{len(self.budget_weights)} weights")
        if any(w < 0 for w in self.budget_weights) or sum(self.budget_weights) <= 0:
            raise ValueError(f"budget_weights must be >= 0 with a positive sum, got {self.budget_weights}")
        if not isinstance(self.per_budget_norm, bool):
            raise ValueError(f"per_budget_norm must be true or false, got {self.per_budget_norm!r}")
        if self.per_budget_norm and len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"per_budget_norm needs distinct budgets (one scale and shift each), got {self.budgets}")
        if self.hidden_mult < 1:
            raise ValueError(f"hidden_mult must be >= 1, got {self.hidden_mult}")
        if self.deepstack not in DEEPSTACK_MODES:
            raise ValueError(f"deepstack must be one of {DEEPSTACK_MODES}, got {self.deepstack!r}")
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = list(self.target_modules)
