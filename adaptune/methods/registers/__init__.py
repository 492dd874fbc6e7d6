"""PH-Reg (`registers`): post-hoc register tokens for pre-trained ViTs, trained by self-distillation.

Importing this package registers the method with PEFT and adaptune's `METHODS`. The distillation pieces (teacher
views, denoised targets, loss) are in `distill.py`, the artifact measurements in `diagnostics.py`. The distillation is
the method's objective (`objective.RegistersObjective`, declared on `INFO`, settings from `RegistersConfig`): the
trainer applies it on the images of the `register_distill` task (`adaptune/tasks/register_distill.py`), which only
provides them.

    from peft import get_peft_model
    from adaptune.methods.registers import RegistersConfig, distill
    student = get_peft_model(clip, RegistersConfig(num_registers=16))
    target = distill.denoised_target(student, "clip", pixel_values)      # teacher = adapter disabled, K views
    loss = distill.distill_loss(distill.patch_features(student, "clip", pixel_values), target)
"""

from __future__ import annotations

from .._peft_ext import MethodInfo, register_method
from .config import UNLOCKABLE, RegistersConfig
from .layer import RegisterBlockLayer, RegisterEmbeddingLayer, drop_registers
from .model import SUPPORTED_FAMILIES, RegistersModel, find_vit
from .objective import RegistersObjective

INFO = register_method(
    MethodInfo(
        name="registers",
        config_cls=RegistersConfig,
        model_cls=RegistersModel,
        # CLIPSeg is supported by the tuner, but runs its CLIP encoder under torch.no_grad(): train its registers
        # on `clip.vision_model` with `register_distill`, not through the segmentation forward the matrix checks.
        families=tuple(f for f in SUPPORTED_FAMILIES if f != "clipseg"),
        test_config=lambda family, model: RegistersConfig(num_registers=4),
        fsdp=False,  # under FSDP 2 the unlocked block's trainable copies got no gradient (docs/scaling.md)
        description="PH-Reg: post-hoc register tokens for a ViT (plus trainable copies of its position/patch "
                    "embeddings and the last block the model reads), trained by self-distillation from the frozen "
                    "model",
        mergeable=False,
        objective=RegistersObjective,
    ),
    prefix="reg_",
)

__all__ = [
    "UNLOCKABLE", "RegisterBlockLayer", "RegisterEmbeddingLayer", "RegistersConfig", "RegistersModel",
    "RegistersObjective", "drop_registers", "find_vit",
]
