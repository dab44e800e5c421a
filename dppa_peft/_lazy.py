"""Deferred imports: the command line parses its options without loading torch, transformers or peft.

``defer("torch")`` puts a placeholder module in ``sys.modules``; ``import torch`` at the top of a module is then
free, and the first attribute used (``torch.zeros``) imports the real torch, which replaces the placeholder
everywhere. ``after_import("peft", fn)`` runs ``fn`` once peft has been imported (or at once if it already is).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable
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


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``name`` with the other finders and wraps its loader to call ``hook`` once the module is executed.

    It stays on ``sys.meta_path`` until then: ``importlib.util.find_spec(name)`` (transformers' "is peft available"
    probe) also asks the finders, and must not use the hook up without running the module."""

    def __init__(self, name: str, hook: Callable[[], None]) -> None:
        self.name = name
        self.hook = hook

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        spec = _other_finders_spec(self, fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self._executed)
        return spec

    def _executed(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
            self.hook()


def _other_finders_spec(
    finder: importlib.abc.MetaPathFinder, fullname: str, path: Any, target: Any
) -> importlib.machinery.ModuleSpec | None:
    """The spec that the finders on ``sys.meta_path`` other than ``finder`` give."""
    for other in sys.meta_path:
        if other is finder or not hasattr(other, "find_spec"):
            continue
        spec = other.find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, hook: Callable[[], None]) -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        self.hook()

    def __getattr__(self, attr: str) -> Any:  # resources, get_source, ... of the wrapped loader
        return getattr(self.loader, attr)


class _PackageWatcher(importlib.abc.MetaPathFinder):
    """Finds the submodules of ``package`` with the other finders and calls ``hook(name)`` after each has run."""

    def __init__(self, package: str, hook: Callable[[str], None]) -> None:
        self.prefix = package + "."
        self.hook = hook

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self.prefix):
            return None
        spec = _other_finders_spec(self, fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, lambda: self.hook(fullname))
        return spec


def after_each_submodule(package: str, hook: Callable[[str], None]) -> None:
    """Call ``hook(name)`` each time a submodule of ``package`` has been imported (from now on)."""
    sys.meta_path.insert(0, _PackageWatcher(package, hook))


def initializing(prefix: str, exclude: str | None = None) -> list[str]:
    """The modules under ``prefix`` whose code is running right now (an import in progress)."""
    return [
        name
        for name, module in list(sys.modules.items())
        if name.startswith(prefix)
        and name != exclude
        and getattr(getattr(module, "__spec__", None), "_initializing", False)
    ]


def after_import(name: str, hook: Callable[[], None]) -> None:
    """Run ``hook`` when module ``name`` is imported, or now if it already is."""
    module = sys.modules.get(name)
    if module is not None and not isinstance(module, _Deferred):
        hook()
    else:
        sys.meta_path.insert(0, _AfterImport(name, hook))
