"""Model Breadcrumbs (mergekit ``magnitude_outliers``, docs/algorithms.md §9): drop the largest and the smallest ``|δ|``.

Of ``n`` entries, the top ``floor(γ·n)`` by ``|δ|`` are dropped as outliers and the next ``k = floor(d·n)`` are kept;
when ``γ·n + k`` exceeds ``n``, fewer outliers are dropped (mergekit's rule). When ``floor(γ·n) = 0`` (γ = 0, or a
tensor with fewer than ``1/γ`` entries) no outlier is dropped and the result is plain magnitude pruning; mergekit
instead slices ``[n_bot:-0]`` and zeroes the whole tensor, a bug this project does not reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..delta.scope import TensorInfo
from .base import PruningMethod, SparseDelta
from .registry import register
from .selection import keep_count, top_k_indices


def breadcrumbs_indices(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Ascending positions of the ``k`` largest ``|δ|`` after the ``floor(γ·n)`` largest (ties: lowest index first)."""
    n = delta.numel()
    k = keep_count(density, n)
    outliers = min(keep_count(gamma, n), n - k)
    kept = top_k_indices(delta, k + outliers, absolute=True)
    dropped = torch.searchsorted(
        kept, top_k_indices(delta, outliers, absolute=True)
    )  # nested: the top-o lie in the top-(k+o)
    keep = torch.ones(kept.numel(), dtype=torch.bool, device=kept.device)
    keep[dropped] = False
    return kept[keep]


@dataclass(frozen=True)
class BreadcrumbsParams:
    gamma: float = field(
        default=0.01,
        metadata={
            "help": "fraction of each tensor's largest |delta| dropped as outliers before keeping the next d "
            "(default 0.01, mergekit's)"
        },
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}; mergekit's default is 0.01")


@register
class Breadcrumbs(PruningMethod):
    name = "breadcrumbs"
    summary = "Model Breadcrumbs: drop the top gamma of |delta| as outliers, keep the next d, drop the rest"
    Params = BreadcrumbsParams  # ranking 'none': the dropped outlier count can change with the density

    def prune(self, info: TensorInfo, delta: torch.Tensor, density: float) -> SparseDelta:
        return SparseDelta.from_indices(delta, breadcrumbs_indices(delta, density, self.params.gamma))
