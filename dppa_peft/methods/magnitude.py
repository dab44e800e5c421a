"""Magnitude pruning: keep the exact top-k ``|δ|`` of every tensor at one uniform density."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..scope import TensorInfo
from .base import PruningMethod, SparseDelta
from .registry import register
from .selection import TIE_MODES, magnitude_mask


@dataclass(frozen=True)
class MagnitudeParams:
    tie_mode: str = field(default="index", metadata={
        "help": f"tie rule at the threshold: 'index' keeps exactly floor(d*n) (lowest index wins); 'threshold_le' "
                f"prunes every |delta| <= t like the released DPPA/OWL code. One of {TIE_MODES}"})


@register
class Magnitude(PruningMethod):
    name = "magnitude"
    summary = "keep the largest |delta| of every tensor (uniform density)"
    Params = MagnitudeParams

    def prune(self, info: TensorInfo, delta: torch.Tensor, density: float) -> SparseDelta:
        return SparseDelta.from_mask(delta, magnitude_mask(delta, density, self.params.tie_mode))
