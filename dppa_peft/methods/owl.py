"""OWL-magnitude on deltas: the data-free OWL baseline of the DPPA code (docs/algorithms.md §6).

Block outlier ratio ``D_l = 100·#{|δ| > M·mean_l|δ|}/n_l`` over all linears of block l; ``D`` is min-max scaled to
``[0, 2λ]`` and re-centred, so the block densities span exactly ``2λ`` around ``1 − α``. Every matrix of a block keeps
its top-k ``|δ|`` at the block's density. Unlike DP there is no linear-level term and no max-abs normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..delta.scope import TensorInfo
from .base import DensityPlan, PruningMethod, SparseDelta
from .outliers import BlockOutliers, StatisticsPasses, abs_sum_bounds, exact_abs_sum, require_in_scope
from .registry import register
from .selection import TIE_MODE_HELP, check_tie_mode, magnitude_indices


def owl_adjustments(ratios: Sequence[float], lam: float) -> list[float]:
    """OWL's allocation minus the base density: ``D'_l − mean(D')`` with ``D' = (D − min D)/(max D − min D)·2λ``.

    Equal ratios give all zeros (uniform density).
    """
    low, high = min(ratios), max(ratios)
    if high == low:
        return [0.0] * len(ratios)
    scaled = [(r - low) / (high - low) * 2.0 * lam for r in ratios]
    mean = sum(scaled) / len(scaled)
    return [s - mean for s in scaled]


@dataclass(frozen=True)
class OwlParams:
    lam: float = field(
        default=0.08,
        metadata={"help": "lambda: block densities span [1-rate-lam, 1-rate+lam] after min-max scaling (default 0.08)"},
    )
    block_outlier_factor: float = field(
        default=5.0,
        metadata={
            "help": "M: entries with |delta| > M times the mean |delta| of their whole block are outliers (default 5)"
        },
    )
    tie_mode: str = field(default="index", metadata={"help": TIE_MODE_HELP})

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}; OWL uses 0.08")
        if self.block_outlier_factor <= 0:
            raise ValueError(f"block_outlier_factor must be > 0, got {self.block_outlier_factor}; OWL uses 5")
        check_tie_mode(self.tie_mode)


@register
class Owl(PruningMethod):
    name = "owl"
    summary = "OWL-magnitude on deltas: block densities from the block outlier ratio (min-max to 2*lambda)"
    Params = OwlParams
    ranking = "magnitude"  # every matrix keeps its top-k |delta| at its block's density
    needs_statistics = True
    statistics_passes = 1  # block sums of |delta| and outliers against the block mean, one block at a time

    def __init__(self, rate: float, params: OwlParams | None = None) -> None:
        super().__init__(rate, params)
        self._passes = StatisticsPasses(self.name, self.statistics_passes)
        self._blocks = BlockOutliers(self.params.block_outlier_factor, "count")
        self._adjustments: dict[int, float] | None = None  # computed once, after the passes

    def observe(self, info: TensorInfo, delta: torch.Tensor, pass_index: int) -> None:
        block = require_in_scope(info, self.name)
        self._passes.record(info.name, pass_index)
        self._adjustments = None
        abs_delta = delta.float().abs()
        bounds = abs_sum_bounds(abs_delta)  # the exact sum only if the block threshold needs it
        self._blocks.add(block, abs_delta, exact_abs_sum(abs_delta) if bounds is None else None, bounds)

    def adjustments(self) -> dict[int, float]:
        """Block index -> density change from the uniform ``1 − α`` (independent of α)."""
        ratios = self._blocks.significance()
        return dict(zip(ratios, owl_adjustments(list(ratios.values()), self.params.lam)))

    def plan(self, info: TensorInfo, rate: float | None = None) -> DensityPlan:
        self._passes.require_complete(info.name)
        rate = self.rate if rate is None else rate
        if self._adjustments is None:
            self._adjustments = self.adjustments()
        return DensityPlan.clipped((1.0 - rate) + self._adjustments[require_in_scope(info, self.name)])

    def prune(self, info: TensorInfo, delta: torch.Tensor, density: float) -> SparseDelta:
        return SparseDelta.from_indices(delta, magnitude_indices(delta, density, self.params.tie_mode))
