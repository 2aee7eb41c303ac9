"""Registry: name -> entry, for every kind of method a study names (route methods, spaces, designs).

Imports no torch, so that validation and analysis stay light; an entry whose implementation
needs torch is declared lazily and imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator

from routed_study.trainables.errors import InputError, did_you_mean, format_choices


class Registry:
    """Name -> entry, in registration order; iterating gives the names (a knob's choices)."""

    def __init__(self, what: str, reserved: tuple[str, ...] = (), listing: str = "registered"):
        self.what = what
        self.reserved = reserved   # names a knob gives another meaning (eval_route_method: same)
        self.listing = listing     # how an unknown name's message introduces the known ones
        self._entries: dict[str, Any] = {}
        self._lazy: dict[str, str] = {}   # name -> module that registers it on import

    def register(self, name: str, entry: Any) -> Any:
        if not isinstance(name, str) or not name or name in self.reserved:
            others = f" other than {format_choices(self.reserved)}" if self.reserved else ""
            raise ValueError(f"{self.what} name must be a non-empty string{others}, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        self._lazy.pop(name, None)
        return entry

    def lazy(self, module: str, *names: str) -> None:
        """Declare names whose implementation ``module`` registers when imported (needs torch)."""
        for name in names:
            self._lazy.setdefault(name, module)

    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self._lazy, *self._entries]))

    def get(self, name: str, where: str = "config") -> Any:
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._entries:
            raise InputError(f"{where}: unknown {self.what} {name!r}{did_you_mean(name, self.names())}; "
                             f"{self.listing}: {format_choices(self.names())}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __len__(self) -> int:
        return len(self.names())
