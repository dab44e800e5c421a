"""Outlier significance of ``|δ|`` for DP and OWL, gathered in streaming passes with O(#tensors) memory.

An entry is an outlier when ``|δ| > N·mean|δ|``. Its significance is a percentage: of the entries (``"count"``, the
released DPPA/OWL code) or of the total magnitude ``Σ|δ|`` (``"magnitude"``, the DPPA paper's "accumulated
magnitudes"). A block's mean is taken over all its linears together, so the ``|δ|`` of a block's linears are held
until the block is complete (one block of fp32 memory), then measured against the block mean: one pass over the
checkpoints, as long as each block's linears arrive together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..scope import TensorInfo

SIGNIFICANCE_KINDS = ("count", "magnitude")


def check_kind(kind: str) -> str:
    """``kind`` when it is a significance kind; an error naming the kinds otherwise."""
    if kind not in SIGNIFICANCE_KINDS:
        raise ValueError(f"unknown significance kind {kind!r}; choose one of {SIGNIFICANCE_KINDS}")
    return kind


def outlier_amount(abs_delta: torch.Tensor, threshold: float, kind: str) -> float:
    """How many entries exceed ``threshold`` (``count``) or their summed magnitude (``magnitude``)."""
    above = abs_delta > threshold
    if kind == "count":
        return float(above.sum())
    return float(torch.where(above, abs_delta, 0.0).sum(dtype=torch.float64))


def significance(amount: float, numel: int, abs_sum: float, kind: str) -> float:
    """``100·amount`` over the entry count or the total magnitude; 0 for an empty or all-zero delta."""
    total = numel if kind == "count" else abs_sum
    return 100.0 * amount / total if total > 0 else 0.0


def matrix_significance(abs_delta: torch.Tensor, factor: float, kind: str) -> tuple[float, float]:
    """``(Σ|δ|, significance)`` of one matrix against its own mean (one pass)."""
    check_kind(kind)
    numel = abs_delta.numel()
    abs_sum = float(abs_delta.sum(dtype=torch.float64))
    threshold = factor * abs_sum / numel if numel else 0.0
    return abs_sum, significance(outlier_amount(abs_delta, threshold, kind), numel, abs_sum, kind)


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
        self._held: list[torch.Tensor] = []

    def add(self, block: int, abs_delta: torch.Tensor, abs_sum: float) -> None:
        """One linear of ``block`` (its ``|δ|`` and their sum); the linears of a block must come one after another."""
        if block != self._open_block:
            self._close_block()
            if block in self.numel:
                raise ValueError(
                    f"block {block} came back after other blocks: pass the linears of each block one "
                    "after another (the statistics hold one block at a time)"
                )
            self._open_block = block
        self.add_magnitude(block, abs_delta.numel(), abs_sum)
        self._held.append(abs_delta)

    def _close_block(self) -> None:
        if self._open_block is not None:  # blocks hold |δ| only once opened
            for abs_delta in self._held:
                self.add_outliers(self._open_block, abs_delta)
        self._open_block, self._held = None, []

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
