"""adaptune: token-budget-aware adaptation of vision-language models.

`import adaptune` is light: it imports neither torch nor PEFT nor transformers and prints nothing. It arranges two
things that happen when they are needed:

- the registries (methods, tasks, rewards, judges, model sources "default" and "pretrained:*", recipe kinds
  "adapter" and "grpo") fill themselves at the first read of any of them, by importing every package that registers
  something (`_register_everything`); `adaptune info`, the recipe loader and the test matrices all read them;
- adaptune's adapter methods are registered with PEFT as soon as PEFT is imported (now, if it already is), so
  `import adaptune` followed by `peft.PeftModel.from_pretrained` loads adapters trained here.

`adaptune.models`, `adaptune.methods`, ... are imported on first attribute access. See README.md for the two
commands that run the demo and the tests, and docs/architecture.md for the layers.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any, Callable

from .version import __version__  # noqa: F401
from . import registry as _registry
from .registry import FAMILIES, JUDGES, METHODS, REWARDS, RUN_KINDS, SOURCES, TASKS  # noqa: F401

_REGISTERING = ("default", "methods", "models", "pretrain", "tasks", "train", "rl.rewards", "rl.run")
_SUBPACKAGES = {"adapters", "budget", "cli", "config", "data", "default", "demo", "eval", "methods", "models",
                "pretrain", "registry", "rl", "tasks", "train", "utils", "version"}


def _register_everything() -> None:
    """Import every package that registers something (sources, methods, tasks, rewards, judges, recipe kinds)."""
    for name in _REGISTERING:
        importlib.import_module(f"{__name__}.{name}")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `callback` right after the module `name` has been executed by an import (once)."""

    def __init__(self, name: str, callback: Callable[[], Any]) -> None:
        self.name, self.callback, self._busy = name, callback, False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or self._busy:
            return None
        self._busy = True
        try:  # the spec the other finders give; its loader instance (made for this spec alone) is wrapped
            spec = next((s for f in sys.meta_path if f is not self and hasattr(f, "find_spec")
                         for s in [f.find_spec(fullname, path, target)] if s is not None), None)
        finally:
            self._busy = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
                self.callback()

        loader.exec_module = exec_module
        return spec


def _register_methods_with_peft() -> None:
    importlib.import_module(f"{__name__}.methods")


_registry.set_filler(_register_everything)
if "peft" in sys.modules:
    _register_methods_with_peft()
elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterImport("peft", _register_methods_with_peft))


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
