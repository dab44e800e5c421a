"""A deferred import: the command line parses its options without loading torch.

``defer("torch")`` (called by ``cli.main`` only) puts a placeholder module in ``sys.modules``; ``import torch`` at
the top of a module the option parser imports (the method and merge-mode registries) is then free, and the first
attribute used (``torch.zeros``) imports the real torch, which replaces the placeholder everywhere.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    """A placeholder that imports the real module on first attribute access and then behaves as it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(self, attr: str) -> Any:
        real = self._load()
        return getattr(real, attr)

    def _load(self) -> types.ModuleType:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return real


def defer(*names: str) -> None:
    """Defer importing ``names`` until they are first used (no-op for modules already imported or missing)."""
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            sys.modules[name] = _Deferred(name)
