"""One registry type for the three things registered by name: pruning methods (``methods.registry.METHODS``), merge
modes (``merge.modes.MERGE_MODES``) and per-entry combine steps (``merge.combine.COMBINE_MODES``).

A registry is a dict from name to entry (``sorted(METHODS)``, ``METHODS["dp"]``, ``name in METHODS`` work as on a
dict) that refuses a name registered twice and answers an unknown name with the known ones.
"""

from __future__ import annotations

from typing import TypeVar

Entry = TypeVar("Entry")


class Registry(dict[str, Entry]):
    """Name -> entry; ``kind`` names the entries in messages ('pruning method', 'merge mode', ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, entry: Entry) -> Entry:
        """Register ``entry`` under ``name``; a name registered twice is an error."""
        if name in self:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self[name] = entry
        return entry

    def lookup(self, name: str) -> Entry:
        """The entry registered under ``name``; an unknown name is an error that lists the known ones."""
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {sorted(self)}") from None
