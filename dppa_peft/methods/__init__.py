"""Pruning methods, each registered by name (see ``registry``)."""

from . import breadcrumbs, dare, della, dp, magnitude, owl, ties  # noqa: F401  (registration)
from .base import DensityPlan, PruningMethod, SparseDelta
from .registry import METHODS, create_method, get_method, register

__all__ = ["METHODS", "DensityPlan", "PruningMethod", "SparseDelta", "create_method", "get_method", "register"]
