"""The pruning-method contract and the sparse result every method returns.

A method never reads files: the pipeline streams ``(TensorInfo, fp32 delta)`` pairs to it, first through
``observe`` (only for methods with ``needs_statistics``, e.g. DP and OWL), then through ``plan`` and ``prune``::

    if method.needs_statistics:
        for pass_index in range(method.statistics_passes):
            for info, delta in in_scope_deltas():          # every in-scope tensor, one at a time, block by block
                method.observe(info, delta, pass_index)
    for info, delta in in_scope_deltas():
        sparse = method.prune(info, delta, method.plan(info).density)

A method also declares what it can do, as class attributes and class methods that the rest of the package reads
instead of lists of names: how it ranks kept entries (``ranking``), whether kept sets nest across densities
(``nested``), whether its plan shifts with the rate (``plan_shifts_with_rate``), whether it rescales kept values
(``rescales``), how DPA partitions are re-derived from a stored adapter (``stored_members``) and how reports name it
(``label``). A new method is one module with a ``@register``-ed subclass (``methods/__init__`` imports every module).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..core.errors import UserError
from ..delta.scope import TensorInfo
from .selection import flat_nonzero, gather, keep_count

RANKINGS = ("magnitude", "random", "none")


@dataclass(frozen=True)
class NoParams:
    """A method without hyperparameters besides the rate."""


@dataclass(frozen=True)
class DensityPlan:
    """The density planned for one tensor; ``unclipped`` is the value before clipping to [0, 1]."""

    density: float
    unclipped: float

    @classmethod
    def clipped(cls, unclipped: float, floor: float | None = None) -> "DensityPlan":
        """The plan for a computed density: clipped to [``floor`` or 0, 1], the raw value kept for the record."""
        return cls(density=min(1.0, max(floor or 0.0, unclipped)), unclipped=unclipped)


@dataclass
class SparseDelta:
    """The kept entries of one pruned tensor: ascending flat indices and fp32 values (already rescaled)."""

    indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    def to(self, device: str | torch.device) -> "SparseDelta":
        """The same entries on ``device``."""
        return SparseDelta(self.indices.to(device), self.values.to(device), self.shape)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense delta (fp32 unless ``dtype`` says otherwise)."""
        dtype = dtype or torch.float32
        out = torch.zeros(self.numel, dtype=dtype, device=self.values.device)
        out[self.indices] = self.values.to(dtype)
        return out.reshape(self.shape)

    @classmethod
    def from_mask(cls, delta: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor | float = 1.0) -> "SparseDelta":
        """Keep ``delta`` where ``keep`` is True, multiplied by ``scale`` (a scalar or a tensor shaped like delta).

        Exact zeros are never stored, so an all-zero delta gives an empty result (``nnz == 0``).
        """
        return cls.from_indices(delta, flat_nonzero(keep.reshape(-1)), scale)

    @classmethod
    def from_indices(
        cls, delta: torch.Tensor, indices: torch.Tensor, scale: torch.Tensor | float = 1.0
    ) -> "SparseDelta":
        """Keep ``delta`` at the ascending flat ``indices`` (times ``scale``), dropping exact zeros."""
        values = gather(delta.reshape(-1), indices).float()
        nonzero = values != 0
        if not bool(nonzero.all()):
            indices, values = indices[nonzero], values[nonzero]
        if isinstance(scale, torch.Tensor):
            values = values * scale.reshape(-1)[indices]
        elif scale != 1.0:
            values = values * scale
        return cls(indices=indices, values=values, shape=tuple(delta.shape))


class FullDelta(SparseDelta):
    """A delta with every entry stored (a tensor kept dense): the positions ``0..n-1`` are implicit and built only
    when asked for, so a 131M-entry embedding delta costs its values, not 8 more bytes per entry of indices."""

    def __init__(self, values: torch.Tensor, shape: tuple[int, ...]) -> None:  # noqa: D107 (no dataclass init)
        self.values = values.reshape(-1)
        self.shape = tuple(shape)

    @property
    def indices(self) -> torch.Tensor:  # type: ignore[override]  # derived, never assigned: a read-only field here
        return torch.arange(self.values.numel(), device=self.values.device)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def to(self, device: str | torch.device) -> "FullDelta":
        return FullDelta(self.values.to(device), self.shape)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.values.to(dtype or torch.float32).reshape(self.shape)


class PruningMethod(ABC):
    """One pruning method: a density plan per tensor and a keep/scale rule per tensor."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type] = NoParams
    needs_statistics: ClassVar[bool] = False
    statistics_passes: ClassVar[int] = 1  # full passes of observe over every in-scope delta (when needs_statistics)
    nested: ClassVar[bool] = True  # kept sets are nested across densities (DPA partitions rely on it)
    #: how kept entries are ranked: 'magnitude' (top-k |delta|, lowest index first among ties: partitions re-derive
    #: from the stored values when tie_mode is 'index'), 'random' (a seeded draw: the method overrides
    #: ``stored_members``), 'none' (DPA partitions only when stored while pruning)
    ranking: ClassVar[str] = "none"
    #: ``plan(info, r)`` is ``plan(info)`` moved by ``rate - r`` before clipping (the term added to ``1 - rate``
    #: does not depend on the rate), so partition densities re-derive from the recorded ``unclipped_density``
    plan_shifts_with_rate: ClassVar[bool] = True
    amplified_label: ClassVar[str | None] = None  # how reports name it with DPA (default '<name>+dpa')

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.ranking not in RANKINGS:
            raise TypeError(f"{cls.__name__}.ranking must be one of {RANKINGS}, got {cls.ranking!r}")

    def __init__(self, rate: float, params: Any = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"pruning rate must be in [0, 1], got {rate}; e.g. 0.9 keeps 10% of each delta")
        self.rate = float(rate)
        self.params = params if params is not None else self.Params()

    def observe(self, info: TensorInfo, delta: torch.Tensor, pass_index: int) -> None:
        """Statistics pass ``pass_index`` (0 .. statistics_passes-1) over every in-scope delta.

        Only called when ``needs_statistics``; pass ``p + 1`` starts after pass ``p`` has seen every tensor.
        """

    def plan(self, info: TensorInfo, rate: float | None = None) -> DensityPlan:
        """The density to keep for ``info`` at ``rate`` (default: the method's rate)."""
        density = 1.0 - (self.rate if rate is None else rate)
        return DensityPlan(density=density, unclipped=density)

    @abstractmethod
    def prune(self, info: TensorInfo, delta: torch.Tensor, density: float) -> SparseDelta:
        """Keep about ``density`` of ``delta`` (fp32) and return the kept entries, rescaled as the method says."""

    def describe(self) -> dict[str, Any]:
        """Method name, rate and every hyperparameter, as recorded in the adapter config."""
        return {"name": self.name, "rate": self.rate, "params": dataclasses.asdict(self.params)}

    @classmethod
    def rescales(cls, params: Any) -> bool:
        """Whether kept values are already scaled up (DARE's 1/d), so DPA searches a reduction, not an amplification."""
        return False

    @classmethod
    def label(cls, amplified: bool) -> str:
        """The method's name in reports ('dppa' for DP with DPA)."""
        return (cls.amplified_label or f"{cls.name}+dpa") if amplified else cls.name

    @classmethod
    def stored_members(
        cls,
        name: str,
        shape: tuple[int, ...],
        indices: torch.Tensor,
        values: torch.Tensor,
        densities: list[float],
        params: Any,
    ) -> list[torch.Tensor]:
        """Which stored entries each inner partition boundary keeps (one bool mask per ``densities[:-1]``).

        ``indices`` and ``values`` are the adapter's stored entries of tensor ``name``; ``densities`` the boundary
        densities, most important first, ending at the stored density. Raises when this method cannot re-derive
        its ranking from what is stored.
        """
        if cls.ranking == "magnitude" and getattr(params, "tie_mode", "index") == "index":
            return magnitude_members(name, shape, values, densities)
        raise UserError(
            f"cannot derive DPA partitions from the stored values of a {cls.name!r} adapter (parameters "
            f"{dataclasses.asdict(params)}); prune again with partitions stored: `dppa-peft prune "
            f"--method {cls.name} --amplify ...` or prune(..., partition_rates=[...])"
        )


def magnitude_members(
    name: str, shape: tuple[int, ...], values: torch.Tensor, densities: list[float]
) -> list[torch.Tensor]:
    """Boundary membership of a top-k adapter's stored entries: ranked by ``|stored value|``, lowest index first.

    For values stored in bf16 or fp16, entries whose magnitudes round to the same stored value are ordered by index.
    """
    numel = int(torch.Size(shape).numel())
    if values.numel() > keep_count(densities[-1], numel):
        raise UserError(f"{name} stores {values.numel()} entries, more than the top-k plan; not a top-k adapter")
    order = torch.sort(values.float().abs(), descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return [rank < keep_count(d, numel) for d in densities[:-1]]
