"""Outlier significance of ``|δ|`` for DP and OWL, gathered in streaming passes with O(#tensors) memory.

An entry is an outlier when ``|δ| > N·mean|δ|``. Its significance is a percentage: of the entries (``"count"``, the
released DPPA/OWL code) or of the total magnitude ``Σ|δ|`` (``"magnitude"``, the DPPA paper's "accumulated
magnitudes"). A block's mean is taken over all its linears together, so the ``|δ|`` of a block's linears are held
until the block is complete (one block of fp32 memory), then measured against the block mean: one pass over the
checkpoints, as long as each block's linears arrive together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..delta.scope import TensorInfo

SIGNIFICANCE_KINDS = ("count", "magnitude")
CHUNK = 1 << 18  # entries per cache-sized chunk of the outlier count


def check_kind(kind: str) -> str:
    """``kind`` when it is a significance kind; an error naming the kinds otherwise."""
    if kind not in SIGNIFICANCE_KINDS:
        raise ValueError(f"unknown significance kind {kind!r}; choose one of {SIGNIFICANCE_KINDS}")
    return kind


def outlier_amount(abs_delta: torch.Tensor, threshold: float, kind: str) -> float:
    """How many entries exceed ``threshold`` (``count``) or their summed magnitude (``magnitude``)."""
    if kind == "count":
        return float(count_above(abs_delta, threshold))
    above = abs_delta > threshold
    return float(torch.where(above, abs_delta, 0.0).sum(dtype=torch.float64))


def _numpy_view(tensor: torch.Tensor) -> np.ndarray | None:
    """The flat numpy view of a contiguous CPU fp32 tensor without autograd history; None otherwise."""
    if tensor.device.type != "cpu" or tensor.dtype != torch.float32 or tensor.requires_grad:
        return None
    return tensor.detach().reshape(-1).numpy()


def count_above(values: torch.Tensor, threshold: float) -> int:
    """``int((values > threshold).sum())``: on CPU fp32 in cache-sized numpy chunks (torch's bool sum is ~15×
    slower). Both compare against ``float32(threshold)``, a Python float being cast to the tensor's dtype."""
    array = _numpy_view(values)
    if array is None:
        return int((values > threshold).sum())
    scratch, count = np.empty(min(CHUNK, array.size), dtype=np.bool_), 0
    for start in range(0, array.size, CHUNK):
        part = scratch[: min(CHUNK, array.size - start)]
        np.greater(array[start : start + CHUNK], threshold, out=part)
        count += int(np.count_nonzero(part))
    return count


def exact_abs_sum(abs_delta: torch.Tensor) -> float:
    """``Σ|δ|`` exactly as the paper-faithful statistics define it: torch's float64 sum."""
    return float(abs_delta.sum(dtype=torch.float64))


def abs_sum_bounds(abs_delta: torch.Tensor) -> tuple[float, float] | None:
    """Bounds on :func:`exact_abs_sum` of non-negative fp32 values, from numpy's (6× faster) float64 sum: any
    summation order of ``n`` non-negative terms is within ``(n − 1)·2^-53`` relative of the exact sum, so both sums
    are within twice that of each other. None where numpy cannot read the tensor."""
    array = _numpy_view(abs_delta)
    if array is None:
        return None
    estimate = float(np.add.reduce(array, dtype=np.float64))
    slack = 2.0 * (array.size + 4) * 2.0**-53 * estimate
    return estimate - slack, estimate + slack


def same_float32_threshold(factor: float, low: float, high: float, numel: int) -> bool:
    """Whether every sum in ``[low, high]`` gives the same float32 outlier threshold ``factor · sum / numel``
    (the comparisons cast the threshold to float32), so the outliers can be counted without the exact sum."""
    margin = 1.0 + 2.0**-50  # the two roundings of factor · sum / numel
    return bool(np.float32(factor * low / numel / margin) == np.float32(factor * high / numel * margin))


def significance(amount: float, numel: int, abs_sum: float, kind: str) -> float:
    """``100·amount`` over the entry count or the total magnitude; 0 for an empty or all-zero delta."""
    total = numel if kind == "count" else abs_sum
    return 100.0 * amount / total if total > 0 else 0.0


def matrix_significance(abs_delta: torch.Tensor, factor: float, kind: str) -> tuple[float, float]:
    """``(Σ|δ|, significance)`` of one matrix against its own mean (one pass)."""
    abs_sum, sig, _ = matrix_statistics(abs_delta, factor, kind)
    return exact_abs_sum(abs_delta) if abs_sum is None else abs_sum, sig


def matrix_statistics(
    abs_delta: torch.Tensor, factor: float, kind: str
) -> tuple[float | None, float, tuple[float, float] | None]:
    """``(Σ|δ| or None, significance, bounds on Σ|δ| or None)`` of one matrix against its own mean.

    For ``count`` the exact float64 sum only matters through the float32 threshold it gives, so when the bounds
    of a fast sum give one threshold (nearly always) the exact sum is not computed (None) and the count is
    bit-identical to the exact computation; ``magnitude`` divides by the sum, which is then always exact.
    """
    check_kind(kind)
    numel = abs_delta.numel()
    bounds = abs_sum_bounds(abs_delta) if kind == "count" and numel else None
    if bounds is not None and same_float32_threshold(factor, *bounds, numel):
        threshold = factor * bounds[0] / numel
        return None, significance(outlier_amount(abs_delta, threshold, kind), numel, 1.0, kind), bounds
    abs_sum = exact_abs_sum(abs_delta)
    threshold = factor * abs_sum / numel if numel else 0.0
    return abs_sum, significance(outlier_amount(abs_delta, threshold, kind), numel, abs_sum, kind), None


def centred_norm(values: Sequence[float], lam: float, weights: Sequence[float] | None = None) -> list[float]:
    """DPPA's ``norm(x − mean)``: centre by the (weighted) mean, then scale so that ``max|x| = λ``.

    A spread below 1e-12 of the values' scale (all values equal up to float noise) gives all zeros, never NaN.
    """
    if not values:
        return []
    x = torch.tensor(values, dtype=torch.float64)
    w = torch.ones_like(x) if weights is None else torch.tensor(weights, dtype=torch.float64)
    centred = x - (x * w).sum() / w.sum()
    spread = float(centred.abs().max())
    if spread <= 1e-12 * float(x.abs().max()):
        return [0.0] * len(values)
    return (centred * (lam / spread)).tolist()


def require_in_scope(info: TensorInfo, method: str) -> int:
    """The block index of ``info``; an error for tensors outside decoder blocks."""
    if info.block is None:
        raise ValueError(
            f"{method} plans only linear weights inside decoder blocks; {info.name!r} is out of scope "
            "(the pipeline keeps such tensors dense)"
        )
    return info.block


class StatisticsPasses:
    """Checks that every tensor goes through each statistics pass once, in order, before any plan."""

    def __init__(self, method: str, passes: int) -> None:
        self.method = method
        self.seen: list[set[str]] = [set() for _ in range(passes)]

    def record(self, name: str, pass_index: int) -> None:
        passes = len(self.seen)
        if not 0 <= pass_index < passes:
            raise ValueError(f"{self.method} has {passes} statistics passes; got pass_index {pass_index}")
        if any(self.seen[later] for later in range(pass_index + 1, passes)):
            raise ValueError(
                f"{self.method}: pass {pass_index} observed {name!r} after a later pass had started; "
                "run each pass over every tensor before the next"
            )
        if pass_index > 0 and name not in self.seen[pass_index - 1]:
            raise ValueError(f"{self.method}: {name!r} reached pass {pass_index} without pass {pass_index - 1}")
        if name in self.seen[pass_index]:
            raise ValueError(
                f"{self.method}: {name!r} observed twice in pass {pass_index}; call observe once per "
                f"tensor for each pass_index in range(statistics_passes={passes})"
            )
        self.seen[pass_index].add(name)

    def require_complete(self, name: str) -> None:
        if name not in self.seen[0] or len(self.seen[-1]) != len(self.seen[0]):
            raise ValueError(
                f"{self.method} cannot plan {name!r} yet: observe every in-scope tensor in each of its "
                f"{len(self.seen)} statistics passes first (seen in pass 0: {len(self.seen[0])} tensors, "
                f"in the last pass: {len(self.seen[-1])})"
            )


class BlockOutliers:
    """Per-block significance with the mean taken over the whole block, in one pass over the block's linears.

    ``add`` takes the linears of one block after another; a block's ``|δ|`` are kept until the next block starts
    (or ``significance`` is asked), then counted against the block mean with ``add_outliers``.
    """

    def __init__(self, factor: float, kind: str) -> None:
        self.factor = factor
        self.kind = check_kind(kind)
        self.numel: dict[int, int] = {}
        self.abs_sum: dict[int, float] = {}
        self.amount: dict[int, float] = {}
        self._open_block: int | None = None
        self._held: list[tuple[torch.Tensor, float | None, tuple[float, float] | None]] = []

    def add(
        self, block: int, abs_delta: torch.Tensor, abs_sum: float | None, bounds: tuple[float, float] | None = None
    ) -> None:
        """One linear of ``block``: its ``|δ|`` and their sum, or None and ``bounds`` on the sum
        (``matrix_statistics``: the exact sum is then computed only if the block threshold needs it). The linears
        of a block must come one after another."""
        if abs_sum is None and bounds is None:
            raise ValueError("pass the sum of |delta| or bounds on it")
        if block != self._open_block:
            self._close_block()
            if block in self.numel:
                raise ValueError(
                    f"block {block} came back after other blocks: pass the linears of each block one "
                    "after another (the statistics hold one block at a time)"
                )
            self._open_block = block
        self.numel[block] = self.numel.get(block, 0) + abs_delta.numel()
        self._held.append((abs_delta, abs_sum, bounds))

    def _close_block(self) -> None:
        """Count the held linears against the block mean: from bounds on the block sum when they give one float32
        threshold (bit-identical counts), else from the exact sums (computed now for those not known)."""
        block, held = self._open_block, self._held
        self._open_block, self._held = None, []
        if block is None:
            return
        numel = self.numel[block]
        if self.kind == "count" and numel and any(abs_sum is None for _, abs_sum, _ in held):
            low = high = 0.0
            for _, abs_sum, bounds in held:
                lower, upper = (abs_sum, abs_sum) if bounds is None else bounds
                low, high = low + (lower or 0.0), high + (upper or 0.0)
            margin = 1.0 + len(held) * 2.0**-52  # the roundings of the additions above
            if same_float32_threshold(self.factor, low / margin, high * margin, numel):
                self.abs_sum[block] = (low + high) / 2  # the sum only matters through the threshold for counts
                for abs_delta, _, _ in held:
                    self.amount[block] = self.amount.get(block, 0.0) + count_above(abs_delta, self.factor * low / numel)
                return
        for abs_delta, abs_sum, _ in held:
            exact = exact_abs_sum(abs_delta) if abs_sum is None else abs_sum
            self.abs_sum[block] = self.abs_sum.get(block, 0.0) + exact
        for abs_delta, _, _ in held:
            self.add_outliers(block, abs_delta)

    def add_magnitude(self, block: int, numel: int, abs_sum: float) -> None:
        self.numel[block] = self.numel.get(block, 0) + numel
        self.abs_sum[block] = self.abs_sum.get(block, 0.0) + abs_sum

    def add_outliers(self, block: int, abs_delta: torch.Tensor) -> None:
        threshold = self.factor * self.abs_sum[block] / self.numel[block] if self.numel[block] else 0.0
        self.amount[block] = self.amount.get(block, 0.0) + outlier_amount(abs_delta, threshold, self.kind)

    def significance(self) -> dict[int, float]:
        """Block index -> significance (%), blocks in ascending order."""
        self._close_block()
        return {
            block: significance(self.amount.get(block, 0.0), self.numel[block], self.abs_sum[block], self.kind)
            for block in sorted(self.numel)
        }
