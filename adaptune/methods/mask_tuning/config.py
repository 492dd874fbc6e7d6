"""`MaskTuningConfig`: the knobs of R-AMT (regularized mask tuning), validated when the config is built.

Every field has a help text; `__post_init__` rejects values that cannot work (a threshold above the initial score
would start with every weight masked, a negative regulariser, a lambda outside [0, 1]).

    from adaptune.methods.mask_tuning import MaskTuningConfig
    config = MaskTuningConfig()                          # vision attention + patch embedding of the model's family
    config = MaskTuningConfig(target_modules=r".*mlp\\.fc1", gradient_dropout=False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from peft.config import PeftConfig

from .._peft_ext import add_peft_type

METHOD_NAME = "mask_tuning"


@dataclass
class MaskTuningConfig(PeftConfig):
    """Binary masks over frozen weights, learned through real-valued scores with a straight-through gradient."""

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Modules whose weights get a mask: a regex (full match) or a list of names / name suffixes. "
                          "Any nn.Linear, nn.Conv1d/2d/3d qualifies. None = the vision encoder's attention projections "
                          "(fused qkv or q/k/v, and the output projection) plus the patch-embedding convolution, "
                          "found through the model family (see `default_target_modules`)."},
    )
    target_parameters: list[str] | None = field(
        default=None, metadata={"help": "Not supported by mask tuning (weights are targeted through their module)."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules never masked (regex or names), applied after target_modules."},
    )
    init_score: float = field(default=0.01, metadata={"help": "Initial value of every score (R-AMT: 0.01)."})
    threshold: float = field(
        default=0.005, metadata={"help": "mask = score > threshold (R-AMT: 0.005, so every mask starts at 1)."},
    )
    score_l2_weight: float = field(
        default=1e-4,
        metadata={"help": "Weight of the regulariser: sum over masked tensors of the L2 norm of their scores "
                          "(added by the method's objective on every task)."},
    )
    gradient_dropout: bool = field(
        default=True,
        metadata={"help": "Gate the task gradient by its agreement with the gradient of KL(frozen zero-shot logits || "
                          "current logits) (R-AMT). Applied by the method's objective on every task whose loss comes "
                          "from logits; a recipe whose task has none must set it to false."},
    )
    gradient_dropout_lambda: float = field(
        default=1.0, metadata={"help": "Strength of gradient dropout in [0, 1]: 0 = plain gradient, 1 = full gating."},
    )
    save_scores: bool = field(
        default=True,
        metadata={"help": "Also store the real-valued scores (fp32) next to the bit-packed masks, to resume training. "
                          "False = masks only (1 bit per weight); loading then rebuilds scores from the masks."},
    )
    base_family: str | None = field(
        default=None, metadata={"help": "Filled in when the adapter is created: the base model's family."},
    )
    target_shapes: dict[str, list[int]] | None = field(
        default=None,
        metadata={"help": "Filled in when the adapter is created: weight shape of every masked module, checked when "
                          "the adapter is attached (a wrong base model gets a message saying what differs)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = add_peft_type(METHOD_NAME)
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = list(self.target_modules)
        if self.target_parameters:
            raise ValueError("MaskTuningConfig.target_parameters: not supported; target the owning module by name")
        if not self.init_score > self.threshold:
            raise ValueError(f"MaskTuningConfig.threshold={self.threshold}: must be below init_score="
                             f"{self.init_score}, otherwise every weight starts masked")
        if self.score_l2_weight < 0:
            raise ValueError(f"MaskTuningConfig.score_l2_weight={self.score_l2_weight}: must be >= 0")
        if not 0.0 <= self.gradient_dropout_lambda <= 1.0:
            raise ValueError(f"MaskTuningConfig.gradient_dropout_lambda={self.gradient_dropout_lambda}: must be in "
                             "[0, 1]")
