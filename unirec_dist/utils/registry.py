"""Name -> entry maps for the pluggable components (encoders, tasks): one mechanism for both.

A `Registry` is a dict (name -> entry, usually a NamedTuple of a config dataclass and the class
it builds) that knows what it registers, so an unknown name fails the same way everywhere: one
`ConfigError` line with the nearest registered name and the full list. Entries are added by the
package's registry module (models/encoders/registry.py, tasks/registry.py) or, for a component
defined outside the package, with `register(name, entry)` before the config is loaded.
"""
from __future__ import annotations

import difflib
from typing import Any, TypeVar

from unirec_dist.errors import ConfigError

E = TypeVar("E")


class Registry(dict[str, E]):
    """Registered entries by name; `what` names the kind of component in messages ("encoder")."""

    def __init__(self, what: str, entries: dict[str, E] | None = None) -> None:
        super().__init__(entries or {})
        self.what = what

    def register(self, name: str, entry: E) -> E:
        """Add `entry` under `name` (a name already taken is a programming error)."""
        if name in self:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self[name] = entry
        return entry

    def unknown(self, name: Any, extra: tuple[str, ...] = ()) -> str:
        """The message for an unregistered `name`; `extra`: other accepted names to list."""
        names = sorted([*self, *extra])
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.what} {name!r}{hint}; registered: {', '.join(names)}"

    def lookup(self, name: Any, key: str) -> E:
        """The entry for `name`, or ConfigError("`key`: unknown ...") naming the config key."""
        if name not in self:
            raise ConfigError(f"{key}: {self.unknown(name)}")
        return self[name]
