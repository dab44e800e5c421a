"""Magnitude pruning: keep the exact top-k ``|δ|`` of every tensor at one uniform density."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..delta.scope import TensorInfo
from .base import PruningMethod, SparseDelta
from .registry import register
from .selection import TIE_MODE_HELP, check_tie_mode, magnitude_indices


@dataclass(frozen=True)
class MagnitudeParams:
    tie_mode: str = field(default="index", metadata={"help": TIE_MODE_HELP})

    def __post_init__(self) -> None:
        check_tie_mode(self.tie_mode)


@register
class Magnitude(PruningMethod):
    name = "magnitude"
    summary = "keep the largest |delta| of every tensor (uniform density)"
    Params = MagnitudeParams
    ranking = "magnitude"

    def prune(self, info: TensorInfo, delta: torch.Tensor, density: float) -> SparseDelta:
        return SparseDelta.from_indices(delta, magnitude_indices(delta, density, self.params.tie_mode))
