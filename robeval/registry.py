"""Name → factory registries with a forgiving getter (lower-case, aliases, callables pass through)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from robeval.errors import UnknownNameError

T = TypeVar("T")


def canonical(name: str) -> str:
    """Lower-case a user-given name and unify separators, so `Wide_ResNet`, `wide-resnet` match."""
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """A dict of named entries with aliases; `get` raises a one-line error listing known names."""

    def __init__(self, kind: str, ordered: bool = False):
        """`ordered`: `names()` lists the names as registered, not sorted (short vocabularies)."""
        self.kind = kind
        self.ordered = ordered
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Register `entry` under `name` and its aliases."""
        key = canonical(name)
        if key in self._entries or key in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[key] = entry
        for alias in aliases:
            self._aliases[canonical(alias)] = key
        return entry

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda entry: self.add(name, entry, aliases)

    def resolve(self, name: str) -> str:
        """The registered name that `name` (any case, or an alias) refers to."""
        key = canonical(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            known = ", ".join(self.names())
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}")
        return key

    def get(self, name: str | T) -> T:
        """The entry for `name`; non-string arguments are returned as they are."""
        if not isinstance(name, str):
            return name
        return self._entries[self.resolve(name)]

    def names(self) -> list[str]:
        """Registered names (aliases excluded), sorted unless the registry is `ordered`."""
        return list(self._entries) if self.ordered else sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical(name)
        return key in self._entries or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
