"""DELLA MagPrune: row-wise magnitude-ranked keep probabilities, random drop, rescale ``1/q`` (docs/algorithms.md §8).

In each row, ``|δ|`` is ranked ascending (rank 0 .. n−1, ties by lower index first), ``ρ = rank/(n − 1)``, and the
keep probability is ``q = (d − ε) + 2ε·ρ``: from ``d − ε`` for the smallest entry to ``d + ε`` for the largest, mean
``d``. ``ε`` is the half-width (mergekit's ``epsilon``; the DELLA repo's ``window_size`` is ``2ε``). The mask is
``u < q`` with ``u`` uniform from a generator seeded by (seed, tensor name), so for one seed the kept sets are
nested across densities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..delta.scope import TensorInfo
from .base import PruningMethod, SparseDelta
from .dare import tensor_generator
from .registry import register

RANK_CHUNK = 1 << 22  # entries ranked at once: bounds the int64/float64 rank buffers to 32 MiB each


def check_window(density: float, epsilon: float) -> None:
    """Require ``0 < d − ε`` and ``d + ε ≤ 1`` for ``0 < d < 1`` (density 0 and 1 need no window)."""
    if 0.0 < density < 1.0 and not (density - epsilon > 0.0 and density + epsilon <= 1.0 + 1e-12):
        raise ValueError(
            f"DELLA keep probabilities d-epsilon..d+epsilon = {density - epsilon:.4g}..{density + epsilon:.4g} must "
            f"lie in (0, 1] (density {density:.4g}, epsilon {epsilon:.4g}); pass --epsilon below "
            f"{min(density, 1.0 - density):.4g} or choose another rate"
        )


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """A 2-D view with one row per output row (a 1-D tensor is a single row)."""
    return tensor.reshape(1, -1) if tensor.dim() <= 1 else tensor.reshape(tensor.shape[0], -1)


def keep_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """``q = (d − ε) + 2ε·rank/(n − 1)`` per row (fp32, shaped like ``delta``); rows of length 1 get ``q = d``."""
    magnitudes = _rows(delta.float().abs())
    n = magnitudes.shape[1]
    if n <= 1:
        return torch.full(delta.shape, density, dtype=torch.float32, device=delta.device)
    step = 2.0 * epsilon / (n - 1)
    chunks = [
        ((density - epsilon) + _row_ranks(chunk).double() * step).float()
        for chunk in magnitudes.split(max(1, RANK_CHUNK // n))
    ]
    return torch.cat(chunks).reshape(delta.shape)


def _row_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Ascending 0-based rank of each entry within its row (ties: lower index first); one argsort and a scatter."""
    order = rows.argsort(dim=1, stable=True)
    positions = torch.arange(rows.shape[1], device=rows.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def magprune(
    delta: torch.Tensor,
    density: float,
    epsilon: float,
    keep: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    rescale: bool = True,
) -> SparseDelta:
    """MagPrune one tensor: keep where ``keep`` (default: ``u < q`` drawn from ``generator``), divide by ``q``."""
    if density <= 0.0 or density >= 1.0:
        return SparseDelta.from_mask(delta, torch.full(delta.shape, density >= 1.0, device=delta.device))
    check_window(density, epsilon)
    probabilities = keep_probabilities(delta, density, epsilon)
    if keep is None:
        draw = torch.rand(delta.shape, generator=generator)  # drawn on the CPU: the same mask on every device
        keep = draw.to(probabilities.device) < probabilities
    return SparseDelta.from_mask(delta, keep, 1.0 / probabilities if rescale else 1.0)


@dataclass(frozen=True)
class DellaParams:
    epsilon: float = field(
        default=0.07,
        metadata={
            "help": "half-width of the keep-probability window d-epsilon..d+epsilon (default 0.07 = the DELLA paper's "
            "window_size 0.14; mergekit's 0.15 rejects densities below 0.15, e.g. rate 0.9)"
        },
    )
    seed: int = field(default=0, metadata={"help": "random seed; each tensor's mask is seeded from (seed, name)"})
    rescale: bool = field(
        default=True,
        metadata={"help": "divide each kept entry by its keep probability q, so E[kept] = delta (default on)"},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 0.5:
            raise ValueError(f"epsilon must be in [0, 0.5], got {self.epsilon}; it is the half-width of the window")


@register
class Della(PruningMethod):
    name = "della"
    summary = "DELLA MagPrune: row-wise rank-based keep probability d-eps..d+eps, random drop, rescale 1/q"
    Params = DellaParams  # ranking 'none': the keep probabilities depend on the dense delta's row ranks

    @classmethod
    def rescales(cls, params: DellaParams) -> bool:
        return bool(params.rescale)

    def __init__(self, rate: float, params: DellaParams | None = None) -> None:
        super().__init__(rate, params)
        check_window(1.0 - self.rate, self.params.epsilon)

    def prune(self, info: TensorInfo, delta: torch.Tensor, density: float) -> SparseDelta:
        generator = tensor_generator(self.params.seed, info.name)
        return magprune(delta, density, self.params.epsilon, generator=generator, rescale=self.params.rescale)
