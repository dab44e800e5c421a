"""Exact top-k selection shared by the magnitude-family methods (docs/algorithms.md §3).

Large tensors are the rule (a 7B embedding has 131M entries), so selection never sorts the whole tensor and never
calls ``torch.quantile`` (which refuses more than 2^24 entries): a random sample brackets the threshold, and only the
entries above the bracket's floor (a few more than k, found and gathered in one numpy scan on CPU) are ranked exactly,
by numpy's vectorised sort on CPU (several times faster than ``partition`` or ``torch.kthvalue`` on the heavily tied
values of bf16 deltas) or ``torch.kthvalue`` on other devices. Positions are 64-bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TIE_MODES = ("index", "threshold_le")
SAMPLE = 1 << 14  # entries sampled to bracket the threshold of a large tensor
TIE_MODE_HELP = (
    "tie rule at the threshold: 'index' (default) keeps exactly floor(d*n), lowest index first among "
    "equal |delta|; 'threshold_le' prunes every |delta| <= t like the released DPPA/OWL code"
)


def check_tie_mode(tie_mode: str) -> None:
    """Raise for an unknown tie rule."""
    if tie_mode not in TIE_MODES:
        raise ValueError(f"unknown tie_mode {tie_mode!r}; choose one of {TIE_MODES}")


def keep_count(density: float, n: int) -> int:
    """``k = floor(d·n + 1e-9)`` clamped to [0, n]."""
    return min(n, max(0, math.floor(density * n + 1e-9)))


def kth_smallest(values: torch.Tensor, position: int) -> tuple[torch.Tensor, int]:
    """The ``position``-th smallest entry (1-based, like ``torch.kthvalue``) of a 1-D fp32 tensor, as a 0-d tensor,
    and how many entries are strictly larger."""
    if values.device.type == "cpu":
        partitioned = np.partition(values.numpy(), position - 1)
        value = partitioned[position - 1]
        return torch.tensor(value, dtype=values.dtype), int(np.count_nonzero(partitioned[position:] > value))
    value = values.kthvalue(position).values
    return value, int((values > value).sum())


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Ascending int64 positions of the True entries of a 1-D boolean tensor (numpy's scan on CPU is faster)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().reshape(-1)


def gather(flat: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``flat[indices]`` (numpy's ``take`` on CPU: faster than torch's indexing there; an empty result from torch,
    as numpy gives it stride 0)."""
    numpy_ok = flat.device.type == "cpu" and indices.device.type == "cpu" and flat.dtype != torch.bfloat16
    if numpy_ok and indices.numel() and not flat.requires_grad:
        return torch.from_numpy(np.take(flat.numpy(), indices.numpy()))
    return flat[indices]


def _reaching(flat: torch.Tensor, floor: torch.Tensor, absolute: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending positions where ``flat`` (or ``|flat|``) is at least ``floor``, and the scores there (numpy on CPU:
    fused scans, no full-size copy of the scores)."""
    if flat.device.type == "cpu":
        array, value = flat.numpy(), floor.item()
        mask = (array >= value) | (array <= -value) if absolute else array >= value
        found = np.flatnonzero(mask)
        scores = np.take(array, found)
        return torch.from_numpy(found), torch.from_numpy(np.abs(scores, out=scores) if absolute else scores)
    positions = flat_nonzero(flat.abs() >= floor if absolute else flat >= floor)
    return positions, flat[positions].abs() if absolute else flat[positions]


def _candidate_floor(flat: torch.Tensor, k: int, absolute: bool) -> torch.Tensor | None:
    """A value that at least ``k`` scores reach, close to the k-th largest, estimated from a fixed random sample of
    ``SAMPLE`` entries with a margin of several standard deviations of the sample rank; None for small tensors."""
    n = flat.numel()
    if n <= 4 * SAMPLE:
        return None
    positions = torch.randint(0, n, (SAMPLE,), generator=torch.Generator().manual_seed(0)).to(flat.device)
    sample = flat[positions].abs() if absolute else flat[positions]
    rank = k * SAMPLE / n
    rank = min(SAMPLE, math.ceil(rank + 6.0 * math.sqrt(rank + 1.0) + 16.0))  # 1-based, from the top
    return kth_smallest(sample, SAMPLE - rank + 1)[0]


def top_k_indices(scores: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """Ascending flat positions of the ``k`` largest scores (``|scores|`` when ``absolute``; ties: lowest index
    first), without a full-size sort or a full-size copy of the scores.

    A random sample gives a floor that a few more than ``k`` entries reach; only those candidates are ranked
    exactly (all entries are when the sample misjudged it), so the result is always exact.
    """
    flat = scores.reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    n = flat.numel()
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    if k >= n:
        return torch.arange(n, device=flat.device)
    floor = _candidate_floor(flat, k, absolute)
    candidates, values = _reaching(flat, floor, absolute) if floor is not None else (None, None)
    if candidates is None or values is None or candidates.numel() < k:
        candidates = torch.arange(n, device=flat.device)
        values = flat.abs() if absolute else flat
    if values.device.type == "cpu":
        return torch.from_numpy(_top_k_cpu(candidates.numpy(), values.numpy(), k))
    threshold, above = kth_smallest(values, values.numel() - k + 1)
    chosen = values > threshold
    missing = k - above
    if missing > 0:
        chosen[flat_nonzero(values == threshold)[:missing]] = True
    return candidates[chosen]


def _top_k_cpu(candidates: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` candidates of largest value (lowest position first among ties), in numpy: the threshold from a
    sorted copy (numpy's vectorised sort beats ``partition`` on the heavily tied values of bf16 deltas)."""
    ordered = np.sort(values)
    threshold = ordered[values.size - k]
    above = values.size - int(np.searchsorted(ordered, threshold, side="right"))
    chosen = values > threshold
    missing = k - above
    if missing > 0:
        chosen[np.flatnonzero(values == threshold)[:missing]] = True
    return candidates[chosen]


def threshold_le_indices(scores: torch.Tensor, density: float, absolute: bool = False) -> torch.Tensor:
    """The released DPPA/OWL rule: ``t = sort(s)[int(n·(1−d))]``, prune every ``s ≤ t`` (over-prunes on ties);
    returns the ascending positions kept (``s > t``; ``s = |scores|`` when ``absolute``).

    The position is ``floor(n·(1−d) + 1e-9)``, so float noise (``5·(1 − 0.8) = 0.9999999999999998``) does not move
    an integer ``n·(1−d)`` down by one.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    position = math.floor(n * (1.0 - density) + 1e-9)
    if position >= n:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    if position < 0:
        return torch.arange(n, device=flat.device)
    kept = top_k_indices(flat, n - position, absolute)  # t = the (position+1)-th smallest and everything above it
    values = flat[kept].float()
    values = values.abs() if absolute else values
    return kept[values > values.min()]


def magnitude_indices(delta: torch.Tensor, density: float, tie_mode: str = "index") -> torch.Tensor:
    """Ascending flat positions of the largest ``|δ|`` at ``density`` under the chosen tie rule."""
    check_tie_mode(tie_mode)
    if tie_mode == "index":
        return top_k_indices(delta, keep_count(density, delta.numel()), absolute=True)
    return threshold_le_indices(delta, density, absolute=True)
