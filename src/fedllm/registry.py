"""One registry for every pluggable kind (algorithms, aggregators, server optimizers, transforms,
objectives, sources, splitters, templates, metrics): names are checked when registered, and an
unknown name is one line that lists the known ones and the closest match."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")
X = TypeVar("X")

NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry (a class, a factory or a preset) of one pluggable kind.

    ``kind`` names the kind in messages ("algorithm", "dataset source"); ``error`` is the exception
    type an unknown name raises (a ValueError subclass such as a module's own error type).
    """

    def __init__(self, kind: str, *, error: type[Exception] = ValueError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}

    # ----- registration
    def register(self, name: str) -> Callable[[X], X]:
        """Decorator registering an entry under a unique lower-case ``name``; a class gets ``cls.name = name``."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower-case letters, digits, '.', '_' or '-'")

        def decorate(entry: X) -> X:
            old = self._entries.get(name)
            if old is not None and _identity(old) != _identity(entry):
                raise ValueError(f"{self.kind} {name!r} registered twice: already registered by {_describe(old)}")
            if isinstance(entry, type):
                entry.name = name  # type: ignore[attr-defined]
            self._entries[name] = entry  # type: ignore[assignment]
            return entry

        return decorate

    # ----- lookup
    def lookup(self, name: str) -> T:
        """The entry registered as ``name``; ``self.error`` with the known names otherwise
        (``get`` keeps the Mapping meaning: None for an unknown name)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.error(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The one-line message for a name that is not registered."""
        close = difflib.get_close_matches(str(name).lower(), list(self._entries), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries)) or 'none'}{hint}"

    def check(self, name: str) -> str:
        """``name`` if registered, else ValueError (for config validators, which collect every error)."""
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        return name

    # ----- Mapping
    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(sorted(self._entries))})"


def _identity(entry: object) -> object:
    """The same class imported again (a module reload) may replace itself; anything else may not."""
    if isinstance(entry, type):
        return (entry.__module__, entry.__qualname__)
    return id(entry)


def _describe(entry: object) -> str:
    if isinstance(entry, type):
        return f"{entry.__module__}.{entry.__qualname__}"
    return repr(entry)


__all__ = ["NAME", "Registry"]
