"""Exact top-k selection shared by the magnitude-family methods (ALGORITHMS.md decision 3).

Large tensors are the rule (a 7B embedding has 131M entries), so selection never sorts and never calls
``torch.quantile`` (which refuses more than 2^24 entries): the threshold is an exact order statistic found by
``numpy.partition`` on CPU (introselect, about 5x faster than ``torch.kthvalue`` there) and ``torch.kthvalue`` on
other devices; positions are 64-bit throughout.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TIE_MODES = ("index", "threshold_le")
TIE_MODE_HELP = ("tie rule at the threshold: 'index' (default) keeps exactly floor(d*n), lowest index first among "
                 "equal |delta|; 'threshold_le' prunes every |delta| <= t like the released DPPA/OWL code")


def check_tie_mode(tie_mode: str) -> None:
    """Raise for an unknown tie rule."""
    if tie_mode not in TIE_MODES:
        raise ValueError(f"unknown tie_mode {tie_mode!r}; choose one of {TIE_MODES}")


def keep_count(density: float, n: int) -> int:
    """``k = floor(d·n + 1e-9)`` clamped to [0, n]."""
    return min(n, max(0, math.floor(density * n + 1e-9)))


def kth_smallest(flat: torch.Tensor, position: int) -> tuple[torch.Tensor, int]:
    """The ``position``-th smallest entry (1-based, like ``torch.kthvalue``) of a 1-D fp32 tensor, as a 0-d tensor,
    and how many entries are strictly larger."""
    if flat.device.type == "cpu":
        partitioned = np.partition(flat.numpy(), position - 1)
        value = partitioned[position - 1]
        return torch.tensor(value, dtype=flat.dtype), int(np.count_nonzero(partitioned[position:] > value))
    value = flat.kthvalue(position).values
    return value, int((flat > value).sum())


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Ascending int64 positions of the True entries of a 1-D boolean tensor (numpy's scan on CPU is faster)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().reshape(-1)


def _top_k_flat_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k mask of a 1-D fp32 tensor with ``0 < k < n``; ties at the threshold go to the lowest index."""
    threshold, above = kth_smallest(flat, flat.numel() - k + 1)
    mask = flat > threshold
    missing = k - above
    if missing > 0:
        mask[flat_nonzero(flat == threshold)[:missing]] = True
    return mask


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest scores; ties at the threshold go to the lowest flat index."""
    flat = scores.reshape(-1).float()
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(flat, dtype=torch.bool).reshape(scores.shape)
    if k >= n:
        return torch.ones_like(flat, dtype=torch.bool).reshape(scores.shape)
    return _top_k_flat_mask(flat, k).reshape(scores.shape)


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending flat positions of the ``k`` largest scores (ties: lowest index first), without a full-size sort."""
    flat = scores.reshape(-1).float()
    n = flat.numel()
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    if k >= n:
        return torch.arange(n, device=flat.device)
    return flat_nonzero(_top_k_flat_mask(flat, k))


def threshold_le_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """The released DPPA/OWL rule: ``t = sort(s)[int(n·(1−d))]``, prune every ``s ≤ t`` (over-prunes on ties).

    The position is ``floor(n·(1−d) + 1e-9)``, so float noise (``5·(1 − 0.8) = 0.9999999999999998``) does not move
    an integer ``n·(1−d)`` down by one.
    """
    flat = scores.reshape(-1).float()
    n = flat.numel()
    position = math.floor(n * (1.0 - density) + 1e-9)
    if position >= n:
        return torch.zeros_like(flat, dtype=torch.bool).reshape(scores.shape)
    if position < 0:
        return torch.ones_like(flat, dtype=torch.bool).reshape(scores.shape)
    return (flat > kth_smallest(flat, position + 1)[0]).reshape(scores.shape)


def magnitude_indices(delta: torch.Tensor, density: float, tie_mode: str = "index") -> torch.Tensor:
    """Ascending flat positions of the largest ``|δ|`` at ``density`` under the chosen tie rule."""
    check_tie_mode(tie_mode)
    if tie_mode == "index":
        return top_k_indices(delta.abs(), keep_count(density, delta.numel()))
    return flat_nonzero(threshold_le_mask(delta.abs(), density).reshape(-1))
