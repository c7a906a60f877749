"""A generic name -> object registry with did-you-mean errors.

Names are permanent leaderboard keys, so they are explicit strings (lm-eval style) and a
duplicate registration is an error, never a silent override.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateNameError(ValueError):
    """Raised when a name is registered twice."""


def suggest(name: str, choices: list[str], n: int = 3) -> list[str]:
    """Return up to ``n`` choices close to ``name`` (case-insensitive)."""
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def did_you_mean(name: str, choices: list[str], prefix: str = "", n: int = 3) -> str:
    """`` Did you mean: a, b?`` with the close choices (each behind ``prefix``), or ``""``."""
    close = suggest(name, choices, n)
    return f" Did you mean: {', '.join(prefix + c for c in close)}?" if close else ""


def key_hint(key: object, choices: list[str]) -> str:
    """`` (did you mean 'y'?)`` with the closest key, or ``""``: for unknown mapping keys."""
    close = suggest(str(key), choices)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_message(kind: str, name: str, choices: list[str]) -> str:
    """``Unknown method 'x'. Did you mean: y? Available: a, b, c`` (lm-eval's format)."""
    return f"Unknown {kind} '{name}'.{did_you_mean(name, choices)} Available: {', '.join(sorted(choices)) or '(none)'}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    origin: str  # "builtin" or "dist-name==version" for plugins


class Registry(Generic[T]):
    """Maps names to objects of one kind (methods, datasets, model sources)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T, origin: str = "builtin") -> T:
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._entries:
            prev = self._entries[name]
            raise DuplicateNameError(
                f"{self.kind} '{name}' is already registered (by {prev.origin}); "
                "names are permanent leaderboard keys, pick another"
            )
        self._entries[name] = Entry(name, obj, origin)
        return obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownNameError(unknown_message(self.kind, name, self.names())) from None

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[name]

    def unregister(self, name: str) -> None:
        """Remove a name (tests and plugin reloads only)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())
