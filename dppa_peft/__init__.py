"""dppa-peft: sparse delta adapters (DP / DPA pruning and baselines) for fine-tuned LLMs, loadable with PEFT.

Importing the package registers the ``SPARSE_DELTA`` adapter type with PEFT (as soon as peft is imported), so
``PeftModel.from_pretrained``, ``load_adapter`` and ``merge_and_unload`` work on adapters written by
``dppa_peft.prune``. The public names below load their modules on first use, so ``import dppa_peft`` (and the
command line's ``--help``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._lazy import after_each_submodule, after_import, initializing
from .core.version import __version__ as __version__


_EXPORTS = {
    "BaseModelMismatchError": "tuner",
    "SparseDeltaConfig": "tuner",
    "SparseDeltaModel": "tuner",
    "SupertuningExport": "publish.stock",
    "export_supertuning": "publish.export",
    "SparseDeltaAdapter": "publish.adapter",
    "amplify": "amplify.api",
    "prune_and_amplify": "prune.api",
    "load_merged": "merge",
    "merge_to_adapter": "merge",
    "merge_to_folder": "merge",
    "merge": "merge.api",
    "PruneSummary": "prune.pipeline",
    "open_adapter": "publish.adapter",
    "prune": "prune.api",
    "evaluate": "evaluation.api",
    "AmplifyParams": "amplify.spec",
    "AmplifySpec": "amplify.spec",
    "DemoSpec": "demo.spec",
    "EvalSpec": "evaluation.spec",
    "ExportSpec": "publish.spec",
    "MergeSpec": "merge.spec",
    "ObjectiveParams": "amplify.spec",
    "PruneSpec": "prune.spec",
    "PushSpec": "publish.spec",
    "RunSpec": "recipe.spec",
    "Source": "core.spec",
}
__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dppa_peft' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


# ``prune`` and ``amplify`` name both a subpackage and an API function. The import system binds a subpackage on this
# package when it is first imported, so both (light: their __init__ holds a docstring) are imported here, first, and
# their names removed again: ``dppa_peft.prune`` and ``dppa_peft.amplify`` are then the functions (``__getattr__``),
# and later imports of ``dppa_peft.prune.*`` find the subpackage in ``sys.modules`` without rebinding the name.
for _name in ("amplify", "prune"):
    importlib.import_module(f".{_name}", __name__)  # not ``from . import``: that would ask ``__getattr__``
    del globals()[_name]


_PENDING: set[str] = set()  # submodules to import as soon as no module of this package is running


def _import_when_quiet(module: str, finished: str | None = None) -> None:
    """Import ``module`` now, or once the imports of this package now running (other than ``finished``) are done,
    so it never meets a half-initialised module."""
    if initializing(f"{__name__}.", exclude=finished):
        _PENDING.add(module)
    else:
        importlib.import_module(module, __name__)


def _submodule_loaded(name: str) -> None:
    """After each submodule: the adapter config needs its card writer (``publish.card`` registers it), the tuner its
    PEFT push (``tuner.push``); then run what waited for a quiet moment."""
    if name == f"{__name__}.format.config":
        _PENDING.add(".publish.card")
    if name == f"{__name__}.tuner.model":  # PeftModel.push_to_hub publishes dppa-peft's card (tuner.push)
        _PENDING.add(".tuner.push")
    if _PENDING and not initializing(f"{__name__}.", exclude=name):
        while _PENDING:
            importlib.import_module(_PENDING.pop(), __name__)


after_each_submodule(__name__, _submodule_loaded)
# ``tuner`` registers SPARSE_DELTA in PEFT's mappings: import it once peft is (format.config imports peft itself).
after_import("peft", lambda: _import_when_quiet(".tuner"))
