"""dppa-peft: sparse delta adapters (DP / DPA pruning and baselines) for fine-tuned LLMs, loadable with PEFT.

Importing the package registers the ``SPARSE_DELTA`` adapter type with PEFT (as soon as peft is imported;
``tuner/registration.py``), so ``PeftModel.from_pretrained``, ``load_adapter`` and ``merge_and_unload`` work on
adapters written by ``dppa_peft.prune``. The public names below load their modules on first use, so
``import dppa_peft`` (and the command line's ``--help``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .core.version import __version__ as __version__
from .tuner.registration import register_when_peft_is_imported


_EXPORTS = {
    "BaseModelMismatchError": "format.fingerprint",
    "SparseDeltaConfig": "format.config",
    "SparseDeltaModel": "tuner.model",
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

# SPARSE_DELTA becomes known to PEFT as soon as peft is imported (at once if it already is): tuner/registration.py.
register_when_peft_is_imported()
