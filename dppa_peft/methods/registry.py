"""Name -> pruning method. A new method is one module with a ``@register``-ed ``PruningMethod`` subclass."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.registry import Registry
from ..core.validate import check_finite_params
from .base import PruningMethod

METHODS: Registry[type[PruningMethod]] = Registry("pruning method")


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    return METHODS.add(cls.name, cls)


def get_method(name: str) -> type[PruningMethod]:
    return METHODS.lookup(name)


def recorded_method(record: dict[str, Any]) -> tuple[type[PruningMethod], Any]:
    """The method class and parameters of an adapter config's ``method`` record."""
    cls = get_method(str(record.get("name")))
    known = {f.name for f in dataclasses.fields(cls.Params)}
    return cls, cls.Params(**{k: v for k, v in (record.get("params") or {}).items() if k in known})


def create_method(name: str, rate: float, **params: Any) -> PruningMethod:
    """Instantiate method ``name`` at ``rate`` with its hyperparameters (unknown ones are an error)."""
    cls = get_method(name)
    known = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"method {name!r} has no parameter {unknown}; its parameters are {sorted(known) or 'none'}")
    chosen = cls.Params(**params)
    check_finite_params(chosen, f"method {name!r}")
    return cls(rate, chosen)
