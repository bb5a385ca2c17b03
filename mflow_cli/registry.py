"""Name -> class registries, so datasets, models, evaluators and plotters plug in by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories; ``@REG.register("name")`` adds one, ``REG.get("name")`` finds it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, where: str = "") -> T:
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            at = f" ({where})" if where else ""
            raise ConfigError(f"unknown {self.what} {name!r}{at}; known: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


DATASETS: Registry = Registry("dataset")
MODELS: Registry = Registry("model kind")
EVALUATORS: Registry = Registry("evaluator")
PLOTTERS: Registry = Registry("plotter")
