"""Training tasks; each registers itself in `adaptune.TASKS` on import."""

from . import flex_vqa, register_distill, vqa  # noqa: F401
from .base import Task

__all__ = ["Task"]
