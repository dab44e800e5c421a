"""Registration of the SPARSE_DELTA adapter type with PEFT, in one place.

PEFT finds an adapter type in its mapping tables (``peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING``, ``..._TUNER_...`` and
``..._PREFIX_...``); ``PeftModel.from_pretrained``, ``get_peft_model``, transformers' ``load_adapter`` and lm-eval's
``peft=`` loading all look there. PEFT's registration API, ``peft.utils.register_peft_method``, accepts only the names
of its own closed ``PeftType`` enum, so it cannot register a third-party type: :func:`register` fills the three tables
itself, as ``register_peft_method`` does for PEFT's own types. It also connects the two places where PEFT's own code
would write PEFT's files instead of dppa-peft's: ``SparseDeltaConfig.save_pretrained`` (which ``PeftModel``'s
``save_pretrained`` calls) writes dppa-peft's model card (``publish.card``), and a ``PeftModel`` that loads a
SPARSE_DELTA adapter pushes with ``tuner.push``.

``import dppa_peft`` calls :func:`register_when_peft_is_imported`. Importing peft takes seconds, which the command
line's ``--help`` must not pay, so registration waits for peft to be imported, by anyone: at once when it already is,
else through the one import hook below (on ``sys.meta_path`` until registration is done). When peft is imported by a
module of this package that is still being imported (``format.config`` subclasses PEFT's config), registration
waits until that import is complete, so it never meets a half-initialised module.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, cast

PACKAGE = __name__.split(".")[0]
PEFT = "peft"
_registered = False


def register() -> None:
    """Make PEFT know SPARSE_DELTA (its mapping tables), and connect the model card and the PEFT push. Idempotent."""
    global _registered
    if _registered:
        return
    from peft import mapping
    from peft.utils import PeftType

    from ..format.config import SparseDeltaConfig, SparseDeltaType, register_card_writer
    from ..publish.card import write_model_card
    from .model import SparseDeltaModel, register_peft_push
    from .push import push_to_hub

    key = cast(PeftType, SparseDeltaType.SPARSE_DELTA)  # PEFT types its tables by its closed enum; any str works
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[key] = SparseDeltaConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[key] = SparseDeltaModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[key] = SparseDeltaModel.prefix
    register_card_writer(lambda config, directory: write_model_card(directory, config))
    register_peft_push(push_to_hub)
    _registered = True


def register_when_peft_is_imported() -> None:
    """:func:`register` now if peft is imported and no module of this package is being imported; else install the
    import hook that calls it as soon as both hold. Cheap: it imports nothing (``import dppa_peft`` calls it)."""
    if _registered:
        return
    if PEFT in sys.modules and not _importing():
        register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def _importing(done: str | None = None) -> bool:
    """Whether peft or a module of this package (other than ``done``, just executed) is being imported now."""
    return any(
        (name == PEFT or name.startswith(f"{PACKAGE}."))
        and name != done
        and getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
    )


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """The import hook: finds peft and this package's modules with the other finders, and after each has run,
    registers once peft is imported and no module of this package is still being imported; then removes itself.

    It only wraps loaders: ``importlib.util.find_spec("peft")`` (transformers' "is peft available" probe) gets a spec
    whose module is never run, which changes nothing."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != PEFT and not fullname.startswith(f"{PACKAGE}."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenRegister(spec.loader, fullname, self)
                return spec
        return None

    def executed(self, name: str) -> None:
        if PEFT in sys.modules and not _importing(done=name) and self in sys.meta_path:
            sys.meta_path.remove(self)
            register()


class _ThenRegister(importlib.abc.Loader):
    """A module's own loader, then ``_RegisterAfterImport.executed``."""

    def __init__(self, loader: Any, name: str, hook: _RegisterAfterImport) -> None:
        self.loader = loader
        self.name = name
        self.hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        self.hook.executed(self.name)

    def __getattr__(self, attr: str) -> Any:  # resources, get_source, ... of the wrapped loader
        return getattr(self.loader, attr)
