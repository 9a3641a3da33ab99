"""One registry helper for every kind of thing looked up by name (STYLE §2, timm's pattern).

A `Registry` is a read-only mapping from names, as printed, to entries, plus a decorator that
registers an entry. Every registry of asymbp (feedback schemes, update rules, networks, datasets,
experiments) is one, so they share one lookup rule:

- names match **case-insensitively** (`usf`, `USF` and `uSF` are the same scheme);
- an entry may have aliases (`BM` for `BM1`), matched the same way;
- an unknown name raises the one-line `AsymbpError` that lists the valid names.

Iteration gives the names in registration order (the order tables and `--help` print them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from .errors import AsymbpError, unknown

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Entries by name; `kind` names them in errors ("feedback scheme", "model", ...)."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T] = {}  # name as printed -> entry
        self._names: dict[str, str] = {}  # lower-case name or alias -> name as printed

    def register(self, name: str, entry: T | None = None, *, aliases: Iterable[str] = ()):
        """Register `entry` under `name` (and `aliases`); without `entry`, a decorator."""
        if entry is None:
            def deco(obj: T) -> T:
                self.register(name, obj, aliases=aliases)
                return obj

            return deco
        for n in (name, *aliases):
            taken = self._names.get(n.lower())
            if taken is not None and taken != name:
                raise AsymbpError(f"{self.kind} name {n!r} is already registered as {taken!r}")
            self._names[n.lower()] = name
        self._entries[name] = entry
        return entry

    def canonical(self, name: str) -> str:
        """The registered spelling of `name`, or the one-line error listing the valid names."""
        found = self._names.get(str(name).strip().lower())
        if found is None:
            raise unknown(self.kind, name, self._entries, self.hint)
        return found

    def __getitem__(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def reorder(self, key: Callable[[str], object]) -> None:
        """Sort the entries by `key(name)` (e.g. the paper's table order)."""
        self._entries = dict(sorted(self._entries.items(), key=lambda kv: key(kv[0])))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
