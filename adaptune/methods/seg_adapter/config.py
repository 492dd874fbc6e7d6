"""`SegAdapterConfig`: the knobs of the VLSM adapters for CLIPSeg, validated when the config is built.

    SegAdapterConfig(variant="dense", modality="VLC")           # DA-VLC: bottlenecks inside the encoders
    SegAdapterConfig(variant="shallow", modality="V", r=32)    # SA-V: on the vision states feeding the decoder
    SegAdapterConfig(variant="dense", train_decoder=True)      # adapters + the whole CLIPSeg decoder
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig

from .._peft_ext import add_peft_type

METHOD_NAME = "seg_adapter"
VARIANTS = ("dense", "shallow")
DEFAULT_WIDTHS = {"dense": 64, "shallow": 512}
"""The VLSM-Adapter paper's bottleneck widths, used when `r` is None."""
MODALITIES = ("V", "VL", "VLC")


@dataclass
class SegAdapterConfig(PeftConfig):
    """Bottleneck adapters (Linear d->r, ReLU, Linear r->d, ReLU, residual add) for CLIPSeg (VLSM-Adapter)."""

    variant: str = field(
        default="dense",
        metadata={"help": "'dense' (DA): adapters after the attention output and after the MLP output of the first "
                          "`dense_layers` layers of the encoders, before each residual add. 'shallow' (SA): adapters "
                          "on the vision hidden states of `extract_layers` feeding the decoder, plus (VL/VLC) text "
                          "adapters on the end-of-text states of those layers, added to the conditioning embedding."},
    )
    modality: str = field(
        default="VLC",
        metadata={"help": "'V' vision only, 'VL' vision + text, 'VLC' vision + text + one adapter (proj -> proj/2 -> "
                          "proj, 512-256-512 in CLIPSeg) on the projected text conditioning."},
    )
    r: int | None = field(
        default=None,
        metadata={"help": "Bottleneck width of every adapter. None: the paper's fixed widths, dense 64 and shallow "
                          "512 (whatever the model's width). A tiny model sets its own (the pre-trained tiny CLIPSeg's "
                          "recipes: dense 8, shallow 64)."},
    )
    conditioning_r: int | None = field(
        default=None, metadata={"help": "Width of the VLC conditioning adapter; None = projection_dim // 2."},
    )
    dense_layers: int | None = field(
        default=None,
        metadata={"help": "Dense variant: adapt the first k layers of each encoder; None = ceil(3/4 of the depth) "
                          "(9 of 12 in CLIPSeg ViT-B/16)."},
    )
    init_scale: float = field(
        default=1e-3,
        metadata={"help": "Std of the normal init of the up-projections (small, not zero: the final ReLU has zero "
                          "gradient at exactly 0, so a zero init would never train)."},
    )
    train_decoder: bool = field(
        default=False,
        metadata={"help": "Also train the CLIPSeg decoder (added to modules_to_save: 'decoder' for dense; its FiLM, "
                          "layers and transposed convolution for shallow, whose adapters sit in decoder.reduces)."},
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Computed from variant / modality / dense_layers when None (the usual case); a regex or list "
                          "here overrides it (advanced)."},
    )
    target_parameters: list[str] | None = field(default=None, metadata={"help": "Not supported."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Other modules trained in full and saved with the adapter, e.g. ['film_mul', 'film_add']. "
                          "Must not contain modules the adapters wrap."},
    )
    base_family: str | None = field(default=None, metadata={"help": "Filled in at creation: the base family."})
    base_dims: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Filled in at creation: hidden sizes, depths, projection_dim, extract_layers of the base; "
                          "checked when the adapter is attached to a model."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = add_peft_type(METHOD_NAME)
        if self.variant not in VARIANTS:
            raise ValueError(f"SegAdapterConfig.variant={self.variant!r}: must be one of {', '.join(VARIANTS)}")
        if self.modality not in MODALITIES:
            raise ValueError(f"SegAdapterConfig.modality={self.modality!r}: must be one of {', '.join(MODALITIES)}")
        for name in ("r", "conditioning_r", "dense_layers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"SegAdapterConfig.{name}={value}: must be >= 1 (or None for the default)")
        if self.init_scale < 0:
            raise ValueError(f"SegAdapterConfig.init_scale={self.init_scale}: must be >= 0")
        if self.target_parameters:
            raise ValueError("SegAdapterConfig.target_parameters: not supported")
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
            if self.variant == "shallow":
                clash = [m for m in self.modules_to_save if m in ("decoder", "reduces") or "reduces" in m]
                if clash:
                    raise ValueError(f"SegAdapterConfig.modules_to_save={self.modules_to_save}: {clash} contain the "
                                     "shallow adapters (decoder.reduces); use train_decoder=True or name the decoder's "
                                     "film_mul / film_add / layers.N / transposed_convolution")
            if self.modality == "VLC" and "text_projection" in self.modules_to_save:
                raise ValueError("SegAdapterConfig.modules_to_save: text_projection holds the VLC/text adapters")
