"""Training tasks; each registers itself in `adaptune.TASKS` on import."""

from . import fewshot_clip, flex_vqa, register_distill, segmentation, vqa  # noqa: F401
from .base import Task

__all__ = ["Task"]
