"""Typed registries with "did you mean" errors.

A :class:`Registry` maps names to objects (formats, algorithms, architecture specs). Unknown
names raise :class:`~lowbit.errors.UnknownNameError` listing close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from lowbit.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object table for one kind of thing (``kind`` appears in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        key = name.lower()
        if key in self._items:
            raise ConfigError(f"{self.kind} {name!r} is registered twice")
        self._items[key] = item
        return item

    def get(self, name: str) -> T:
        key = name.lower()
        if key in self._items:
            return self._items[key]
        close = difflib.get_close_matches(key, self._items, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._items))
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {known})")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))
