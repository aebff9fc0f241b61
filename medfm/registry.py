"""Name → constructor registries (``ENCODERS``, ``LOSSES``, ``HEADS``, ``ADAPTERS``).

A new encoder is one class plus ``@ENCODERS.register("name")``; lookups never
go through if/elif chains. Registering a name twice is an error, as in peft,
so two plugins cannot silently shadow each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medfm.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of constructors that refuses duplicates."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise RegistryError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))


ENCODERS: Registry = Registry("encoder")
LOSSES: Registry = Registry("loss")
HEADS: Registry = Registry("head")
ADAPTERS: Registry = Registry("dataset adapter")
