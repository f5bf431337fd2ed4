"""Implementations registered by name: the one helper behind the model, detector, task and policy registries.

A registry refuses a second registration under a name (one message everywhere) and answers an unknown name with
an error that lists the known ones, of the class its owner raises (a job-file error for a model name, a plain
``ValueError`` for a programming error).
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, error: type[Exception] = ValueError):
        self.kind, self.error = kind, error
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"a {self.kind} is already registered under the name {name!r}")
        self._items[name] = item
        return item

    def get(self, name: str, what: str | None = None) -> T:
        """The item of ``name``; ``what`` leads the error (default: ``unknown <kind> 'name'``)."""
        try:
            return self._items[name]
        except KeyError:
            lead = what or f"unknown {self.kind} {name!r}"
            raise self.error(f"{lead}; expected one of {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
