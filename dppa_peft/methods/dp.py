"""DPPA Dynamic Pruning (DP): per-linear densities from the outlier significance of ``|δ|`` (docs/algorithms.md §5).

``d_lj = (1 − α) + T_l + T'_lj``: ``T_l`` is the block term (block significance centred by the plain mean over
blocks), ``T'_lj`` the linear term (matrix significance centred by the parameter-count-weighted mean over every
linear of the model), each scaled by ``norm(x) = x·λ/max|x|``. Densities are clipped to [0, 1]; each matrix then
keeps its top-k ``|δ|``. The terms do not depend on α, so masks are nested across rates (DPA relies on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..delta.scope import TensorInfo
from .base import DensityPlan, PruningMethod, SparseDelta
from .outliers import BlockOutliers, StatisticsPasses, centred_norm, matrix_statistics, require_in_scope
from .registry import register
from .selection import TIE_MODE_HELP, check_tie_mode, magnitude_indices

# variant -> (significance kind, default N for blocks)
DP_VARIANTS = {"code": ("count", 3.0), "paper": ("magnitude", 5.0)}


@dataclass(frozen=True)
class DPParams:
    dp_variant: str = field(
        default="code",
        metadata={
            "help": "significance of a block or matrix: 'code' (default; the released DPPA code) = percentage of "
            "entries with |delta| > N*mean|delta|; 'paper' = percentage of the total magnitude sum|delta| "
            "carried by those entries"
        },
    )
    lam: float = field(
        default=0.08,
        metadata={
            "help": "lambda: largest density adjustment of each term (block and linear), in [-lam, lam] (default 0.08)"
        },
    )
    outlier_factor: float = field(
        default=5.0,
        metadata={
            "help": "N for matrices: entries with |delta| > N times their matrix's mean |delta| are outliers "
            "(default 5, both variants)"
        },
    )
    block_outlier_factor: float | None = field(
        default=None,
        metadata={
            "help": "N for blocks, against the mean |delta| of the whole block (default: 3 for --dp-variant code, "
            "5 for paper)"
        },
    )
    tie_mode: str = field(default="index", metadata={"help": TIE_MODE_HELP})
    min_density: float | None = field(
        default=None,
        metadata={
            "help": "floor on every matrix's density, so DP cannot drop a whole module (default off: the paper's DP, "
            "whose -lambda terms can plan density 0 at high rates); an improvement, recorded in the adapter"
        },
    )

    def __post_init__(self) -> None:
        if self.min_density is not None and not 0.0 <= self.min_density <= 1.0:
            raise ValueError(f"min_density must be a density in [0, 1], got {self.min_density}")
        if self.dp_variant not in DP_VARIANTS:
            raise ValueError(f"unknown dp_variant {self.dp_variant!r}; choose one of {sorted(DP_VARIANTS)}")
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}; the DPPA paper uses 0.08")
        for name in ("outlier_factor", "block_outlier_factor"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}; outliers are entries above N x the mean |delta|")
        check_tie_mode(self.tie_mode)

    @property
    def significance_kind(self) -> str:
        return DP_VARIANTS[self.dp_variant][0]

    @property
    def block_factor(self) -> float:
        """``block_outlier_factor``, or the variant's default when it is None."""
        return DP_VARIANTS[self.dp_variant][1] if self.block_outlier_factor is None else self.block_outlier_factor


@dataclass(frozen=True)
class _LinearStat:
    block: int
    numel: int
    significance: float


@register
class DynamicPruning(PruningMethod):
    name = "dp"
    summary = "DPPA Dynamic Pruning: per-linear densities from block and linear outlier significance of |delta|"
    Params = DPParams
    ranking = "magnitude"
    amplified_label = "dppa"
    needs_statistics = True
    statistics_passes = 1  # per-matrix significance; block sums and outliers one block at a time

    def __init__(self, rate: float, params: DPParams | None = None) -> None:
        super().__init__(rate, params)
        self._passes = StatisticsPasses(self.name, self.statistics_passes)
        self._blocks = BlockOutliers(self.params.block_factor, self.params.significance_kind)
        self._linears: dict[str, _LinearStat] = {}
        self._terms: tuple[dict[int, float], dict[str, float]] | None = None  # computed once, after the passes

    def observe(self, info: TensorInfo, delta: torch.Tensor, pass_index: int) -> None:
        block = require_in_scope(info, self.name)
        self._passes.record(info.name, pass_index)
        self._terms = None
        abs_delta = delta.float().abs()
        abs_sum, sig, bounds = matrix_statistics(abs_delta, self.params.outlier_factor, self.params.significance_kind)
        self._linears[info.name] = _LinearStat(block, abs_delta.numel(), sig)
        self._blocks.add(block, abs_delta, abs_sum, bounds)
        self._terms = None

    def block_terms(self) -> dict[int, float]:
        """Block index -> ``T_l``: block significance centred by the plain mean over blocks, ``norm``-scaled."""
        significance = self._blocks.significance()
        return dict(zip(significance, centred_norm(list(significance.values()), self.params.lam)))

    def linear_terms(self) -> dict[str, float]:
        """Tensor name -> ``T'_lj``: matrix significance centred by the parameter-weighted mean, ``norm``-scaled."""
        stats = list(self._linears.values())
        terms = centred_norm([s.significance for s in stats], self.params.lam, [s.numel for s in stats])
        return dict(zip(self._linears, terms))

    def plan(self, info: TensorInfo, rate: float | None = None) -> DensityPlan:
        self._passes.require_complete(info.name)
        rate = self.rate if rate is None else rate
        if self._terms is None:
            self._terms = (self.block_terms(), self.linear_terms())
        blocks, linears = self._terms
        block_term = blocks[self._linears[info.name].block]
        return DensityPlan.clipped((1.0 - rate) + block_term + linears[info.name], self.params.min_density)

    def prune(self, info: TensorInfo, delta: torch.Tensor, density: float) -> SparseDelta:
        return SparseDelta.from_indices(delta, magnitude_indices(delta, density, self.params.tie_mode))
