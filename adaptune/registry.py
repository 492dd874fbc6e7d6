"""Tiny name -> object registries.

Families, adapter methods, rewards, judges, tasks, model sources and recipe kinds register themselves where they
are defined (timm-style), so the CLI (`adaptune info`) and the test matrices pick up new entries without a central
list.

    from adaptune.registry import JUDGES

    @JUDGES.register("rule")
    class RuleJudge: ...

    JUDGES.get("rule")        # -> RuleJudge
    JUDGES.get("nope")        # KeyError listing the known names
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


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
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
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
