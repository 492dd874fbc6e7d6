"""`RegistersConfig`: the PEFT config of PH-Reg (post-hoc registers added to a pre-trained ViT by self-distillation).

    from adaptune.methods.registers import RegistersConfig
    config = RegistersConfig(num_registers=16)                       # CLIP / SigLIP / DINOv2 / LLaVA's CLIP tower
    config = RegistersConfig(num_registers=4, unlock=["last_block"])  # fewer trainable weights

`target_modules` is filled in from the model (the ViT's embeddings and the last block the model reads: the ViT's
last, or on LLaVA the block of `vision_feature_layer`); `base_family`, `vision_hidden_size`, `vision_layers` and
`feature_block` are recorded on creation and checked on load.

The self-distillation settings (`num_views`, `max_shift`, `flip`, `candidates`, `fill`, `mse_weight`, `view_seed`)
belong to the method, not to a task: the method's objective (`objective.RegistersObjective`) builds the teacher and
the loss from them on the images the task hands over (`register_distill`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from .._peft_ext import add_peft_type

UNLOCKABLE = ("position_embeddings", "patch_embedding", "last_block")


@dataclass
class RegistersConfig(PeftConfig):
    """PH-Reg: R register tokens after the patch embedding, dropped at the output (docs/methods.md#registers)."""

    num_registers: int = field(default=16, metadata={
        "help": "Register tokens inserted after the patch embedding (after [CLS] when there is one). They get no "
                "positional embedding and are dropped after the last block, so output shapes do not change."})
    init_std: float | None = field(default=None, metadata={
        "help": "Standard deviation of the N(0, std^2) register initialisation; default 1/sqrt(hidden size)."})
    unlock: list[str] = field(default_factory=lambda: list(UNLOCKABLE), metadata={
        "help": "Pre-trained parts trained (as copies saved in the adapter; the originals stay for "
                f"disable_adapter()): any of {', '.join(UNLOCKABLE)}. 'last_block' is the last block the model "
                "reads: the ViT's last, or on LLaVA the block of vision_feature_layer (-2 on LLaVA-1.5)."})
    target_modules: list[str] | str | None = field(default=None, metadata={
        "help": "Filled in automatically: the ViT's embeddings module and the last block the model reads."})
    target_parameters: list[str] | None = field(default=None, metadata={
        "help": "Unused by PH-Reg (PEFT requires the field)."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={
        "help": "Unused by PH-Reg (kept for PEFT's target matching)."})
    base_family: str | None = field(default=None, metadata={
        "help": "Model family the adapter was created on (recorded automatically, checked on load)."})
    vision_hidden_size: int | None = field(default=None, metadata={
        "help": "Hidden size of the ViT (recorded automatically, checked on load)."})
    vision_layers: int | None = field(default=None, metadata={
        "help": "Number of ViT blocks (recorded automatically, checked on load)."})
    feature_block: int | None = field(default=None, metadata={
        "help": "Index of the block whose output the model reads: the last one, or on LLaVA the block of the "
                "model's vision_feature_layer (recorded automatically, checked on load)."})
    num_views: int = field(default=10, metadata={
        "help": "Self-distillation: augmented views the frozen teacher sees per image (view 0 is the identity); the "
                "target is their per-position average."})
    max_shift: float = field(default=0.15, metadata={
        "help": "Self-distillation: largest view shift, as a fraction of the patch-grid side (whole patches)."})
    flip: bool = field(default=True, metadata={"help": "Self-distillation: views may flip the image horizontally."})
    candidates: int = field(default=100, metadata={
        "help": "Self-distillation: random view candidates the farthest-point sampling picks the views from."})
    fill: float = field(default=0.0, metadata={
        "help": "Self-distillation: value of pixels shifted in from outside, after normalisation (0 = mean colour)."})
    mse_weight: float = field(default=1.0, metadata={
        "help": "Self-distillation loss = (1 - mean cosine) + mse_weight * MSE, on patch tokens."})
    view_seed: int = field(default=0, metadata={"help": "Self-distillation: seed of the view sampling."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = add_peft_type("registers")
        if int(self.num_registers) < 1:
            raise ValueError(f"num_registers must be >= 1, got {self.num_registers}")
        self.num_registers = int(self.num_registers)
        if self.init_std is not None and self.init_std <= 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}")
        unknown = sorted(set(self.unlock) - set(UNLOCKABLE))
        if unknown:
            raise ValueError(f"unlock: unknown part(s) {unknown}; choose from {list(UNLOCKABLE)}")
        self.unlock = list(self.unlock)
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = list(self.target_modules)
        if int(self.num_views) < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")
        if not 0 <= self.max_shift < 1:
            raise ValueError(f"max_shift must be a fraction in [0, 1), got {self.max_shift}")
        if int(self.candidates) < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        if self.mse_weight < 0:
            raise ValueError(f"mse_weight must be >= 0, got {self.mse_weight}")
