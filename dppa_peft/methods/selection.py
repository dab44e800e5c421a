"""Exact top-k selection shared by the magnitude-family methods (docs/algorithms.md §3)."""

from __future__ import annotations

import math

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


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest scores; ties at the threshold go to the lowest flat index.

    Uses ``kthvalue`` on an fp32 copy (never ``torch.quantile``, which fails above 2^24 elements).
    """
    flat = scores.reshape(-1).float()
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(flat, dtype=torch.bool).reshape(scores.shape)
    if k >= n:
        return torch.ones_like(flat, dtype=torch.bool).reshape(scores.shape)
    threshold = flat.kthvalue(n - k + 1).values
    mask = flat > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        ties = (flat == threshold).nonzero().reshape(-1)[:missing]
        mask[ties] = True
    return mask.reshape(scores.shape)


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
    threshold = flat.kthvalue(position + 1).values
    return (flat > threshold).reshape(scores.shape)


def magnitude_mask(delta: torch.Tensor, density: float, tie_mode: str = "index") -> torch.Tensor:
    """Keep-mask of the largest ``|δ|`` at ``density`` under the chosen tie rule."""
    check_tie_mode(tie_mode)
    if tie_mode == "index":
        return top_k_mask(delta.abs(), keep_count(density, delta.numel()))
    return threshold_le_mask(delta.abs(), density)
