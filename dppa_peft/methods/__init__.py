"""Pruning methods, each registered by name (see ``registry``).

Every module of this package is imported here, so a new method is one module with a ``@register``-ed
``PruningMethod`` subclass and nothing else to edit.
"""

import importlib
import pkgutil

from .base import DensityPlan, PruningMethod, SparseDelta
from .registry import METHODS, create_method, get_method, recorded_method, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f".{_module.name}", __name__)

__all__ = [
    "METHODS",
    "DensityPlan",
    "PruningMethod",
    "SparseDelta",
    "create_method",
    "get_method",
    "recorded_method",
    "register",
]
