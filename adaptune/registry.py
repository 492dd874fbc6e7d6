"""Tiny name -> object registries.

Families, adapter methods, rewards, judges, tasks, model sources and recipe kinds register themselves where they
are defined (timm-style), so the CLI (`adaptune info`) and the test matrices pick up new entries without a central
list.

    from adaptune.registry import JUDGES

    @JUDGES.register("rule")
    class RuleJudge: ...

    JUDGES.get("rule")        # -> RuleJudge
    JUDGES.get("nope")        # KeyError listing the known names

Reading any registry (`get`, `names`, `items`, `in`, iteration, `len`) first runs the filler installed with
`set_filler` once (`adaptune/__init__.py` installs one that imports every package that registers something), so
`import adaptune` itself stays light and the registries are still full whenever someone looks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_filler: Callable[[], None] | None = None
_fill_state = "idle"  # "idle" -> "filling" -> "done"


def set_filler(filler: Callable[[], None]) -> None:
    """Install the function that fills every registry (run once, at the first read of any registry)."""
    global _filler, _fill_state
    _filler, _fill_state = filler, "idle"


def _fill() -> None:
    global _fill_state
    if _fill_state != "idle" or _filler is None:
        return  # done, or a module being imported by the filler reads a registry: it sees what is there so far
    _fill_state = "filling"
    try:
        _filler()
    except BaseException:
        _fill_state = "idle"  # a failed import (a missing package) is raised again at the next read
        raise
    _fill_state = "done"


class Registry(Generic[T]):
    """An ordered mapping from a name to a registered object, with helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register `obj` under `name`; usable as a decorator (`@REG.register("x")`) or a call."""

        def _add(item: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not item and getattr(existing, "__qualname__", None) != getattr(
                item, "__qualname__", object()
            ):
                raise ValueError(f"{self.kind} {name!r} is already registered to {existing!r}")
            self._items[name] = item
            return item

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> T:
        _fill()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        _fill()
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        _fill()
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        _fill()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        _fill()
        return iter(self._items)

    def __len__(self) -> int:
        _fill()
        return len(self._items)


FAMILIES: Registry = Registry("model family")
METHODS: Registry = Registry("adapter method")
REWARDS: Registry = Registry("reward")
JUDGES: Registry = Registry("judge")
TASKS: Registry = Registry("task")
REDUCERS: Registry = Registry("token reducer")
SOURCES: Registry = Registry("model source")
"""Named model sources (`default`, `pretrained:<kind>`): name -> `resolve(spec, seed) -> local folder`."""
RUN_KINDS: Registry = Registry("recipe kind")
"""Recipe kinds (`adapter`, `grpo`): name -> `run(recipe) -> run directory`."""
