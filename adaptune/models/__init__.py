"""Model families, tiny offline builders and the loader. See `families.py` for the family descriptions."""

from .chat_templates import (TOOL_TEMPLATES, ChatTemplateError, original_chat_template, prepare_chat_template,
                             tool_template_problems)
from .families import FamilySpec, UnsupportedModelError, build_tiny, detect_family, get_family, register_family
from .loader import LoadedModel, ModelLoadError, load_model, load_processor, quantization_config, resolve_source
from .tokenizer import build_tokenizer

__all__ = [
    "TOOL_TEMPLATES", "ChatTemplateError", "original_chat_template", "prepare_chat_template", "tool_template_problems",
    "FamilySpec", "LoadedModel", "ModelLoadError", "UnsupportedModelError", "build_tiny", "build_tokenizer",
    "detect_family", "get_family", "load_model", "load_processor", "quantization_config", "register_family",
    "resolve_source",
]
