"""Merge modes: how the sparse deltas of one tensor from N adapters become what is added to the base
(docs/algorithms.md §12.3).

A merge mode composes two declared steps, like mergekit's generalized task arithmetic:

1. ``sparsify`` (optional): a registered *pruning method* (``magnitude``, ``dare``, ``della``) applied to each
   adapter's delta at ``density`` (a fraction of the tensor's entries, PEFT's and mergekit's meaning), with
   ``density = 1`` (the default) a no-op: the adapters are pruned already;
2. ``consensus``: a combine step of ``merge.combine``: ``"sum"`` (``Σ w_i·δ_i``; stays sparse: the kernel adds the
   deltas one after the other) or ``"ties"`` (sign election + disjoint mean; dense, one tensor at a time).

This registry is NOT the pruning-method registry (``dppa_peft.methods``). ``ties`` names both: the pruning method
``ties`` is the TIES *trim* (per-tensor magnitude top-k), the merge mode ``ties`` is the *election and disjoint
mean* (with an optional extra trim via ``density``). A new merge mode is one ``@register_mode`` class here.

+-------------------+----------------+-----------+-----------------------------------------------------------+
| mode              | sparsify       | consensus | meaning                                                   |
+===================+================+===========+===========================================================+
| sum (linear,      | -              | sum       | task arithmetic ``Σ w_i·δ_i`` (PEFT ``linear`` /          |
| task_arithmetic)  |                |           | ``task_arithmetic``)                                      |
| ties              | magnitude      | ties      | TIES: top-k trim at ``density``, election, disjoint mean  |
| magnitude_prune   | magnitude      | sum       | PEFT ``magnitude_prune``: top-k trim, weighted sum        |
| dare_linear       | dare           | sum       | DARE drop (keep p = density, rescale 1/p), weighted sum   |
| dare_ties         | dare           | ties      | DARE drop, TIES election and disjoint mean                |
| della             | della          | ties      | DELLA MagPrune (rank-based keep p), TIES election         |
| della_linear      | della          | sum       | DELLA MagPrune, weighted sum                              |
+-------------------+----------------+-----------+-----------------------------------------------------------+

Random drops draw from a generator seeded by ``(seed, "<tensor>#<adapter index>")``: reproducible, independent of
the processing order, and different for each adapter.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..kernel.weights import add_sparse, add_sparse_
from ..methods.base import SparseDelta
from ..methods.della import check_window
from ..methods.registry import create_method, get_method
from ..core.registry import Registry
from ..delta.scope import TensorInfo
from .combine import CONSENSUS, SEMANTICS, combine, combine_options

if TYPE_CHECKING:  # the adapter handle imports peft; option parsing must not
    from ..publish.adapter import SparseDeltaAdapter

DENSITY_HELP = (
    "fraction of each tensor's entries kept from every adapter before combining (PEFT/mergekit "
    "'density'); 1.0 keeps every stored entry (the adapters are pruned already)"
)


@dataclass(frozen=True)
class NoModeParams:
    """A merge mode without options."""


@dataclass(frozen=True)
class DensityParams:
    density: float = field(default=1.0, metadata={"help": DENSITY_HELP})

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(
                f"merge density must be in (0, 1], got {self.density}; e.g. 0.5 keeps half of the "
                "entries of each tensor"
            )


@dataclass(frozen=True)
class ElectionParams:
    consensus: str = field(
        default="sum",
        metadata={
            "choices": CONSENSUS,
            "help": "sign election by the 'sum' of the deltas (PEFT 'total') or the 'count' of "
            "their signs (PEFT 'frequency')",
        },
    )
    semantics: str = field(
        default="mergekit",
        metadata={
            "choices": SEMANTICS,
            "help": "'mergekit': elect on the weighted deltas, divide by the agreeing weights; "
            "'peft': elect on the unweighted deltas, divide by the agreeing count",
        },
    )


@dataclass(frozen=True)
class TiesParams(DensityParams, ElectionParams):
    """TIES: optional trim, election, disjoint mean."""


@dataclass(frozen=True)
class DropParams(DensityParams):
    seed: int = field(default=0, metadata={"help": "random seed of the drop; masks are seeded per tensor and adapter"})
    rescale: bool = field(default=True, metadata={"help": "divide kept entries by their keep probability"})


@dataclass(frozen=True)
class DropTiesParams(DropParams, ElectionParams):
    """A random drop, then TIES election."""


@dataclass(frozen=True)
class DellaLinearParams(DropParams):
    epsilon: float = field(
        default=0.07,
        metadata={"help": "DELLA: half-width of the keep-probability window density-epsilon..density+epsilon"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.density < 1.0:
            check_window(self.density, self.epsilon)


@dataclass(frozen=True)
class DellaParams(DellaLinearParams, ElectionParams):
    """DELLA MagPrune, then TIES election."""


@dataclass
class MergedTensor:
    """What a merge adds to one tensor: deltas and weights, added by the kernel in this order (fp32 accumulation)."""

    deltas: list[SparseDelta]
    weights: list[float]

    def apply(self, target: torch.Tensor) -> torch.Tensor:
        """``cast(target.float() + Σ w_i·δ_i)`` with the one kernel (``kernel.weights.add_sparse``)."""
        return add_sparse(target.detach(), self.deltas, self.weights)

    def apply_(self, target: torch.Tensor) -> torch.Tensor:
        """``apply`` written into ``target`` in place (only the touched entries; ``kernel.weights.add_sparse_``)."""
        return add_sparse_(target, self.deltas, self.weights)

    def as_delta(self) -> SparseDelta:
        """The combined delta as one sparse fp32 tensor (the union of the supports; exact zeros are not stored)."""
        if len(self.deltas) == 1 and self.weights[0] == 1.0:
            return self.deltas[0]
        shape = self.deltas[0].shape
        dense = add_sparse(torch.zeros(shape, dtype=torch.float32), self.deltas, self.weights)
        return SparseDelta.from_mask(dense, torch.ones_like(dense, dtype=torch.bool))


class MergeMode:
    """One merge mode: an optional sparsify step (a pruning method) and a consensus step (``merge.combine``)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type] = NoModeParams
    sparsify: ClassVar[str | None] = None  # pruning method applied to each adapter's delta at ``density``
    consensus: ClassVar[str] = "sum"  # combine step: "sum" (sparse) or "ties" (dense election)
    aliases: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def needs_dense(cls) -> bool:
        """Whether the mode densifies each tensor's deltas (an election); ``sum`` modes stay sparse."""
        return cls.consensus != "sum"

    def prepare(
        self,
        base: str | os.PathLike,
        adapters: Sequence[SparseDeltaAdapter],
        weights: Sequence[float],
        *,
        device: str = "cpu",
        progress: bool = True,
    ) -> list[SparseDeltaAdapter]:
        """The adapters as this mode merges them: unchanged here; learned modes (``merge.learned``) learn their
        factors on ``base`` (on ``device``) and return the adapters with them."""
        return list(adapters)

    def outcome(self) -> dict[str, Any] | None:
        """What ``prepare`` learned (settings, loss curves), recorded with the merge; None for the other modes."""
        return None

    def merge(self, name: str, deltas: Sequence[SparseDelta], weights: Sequence[float]) -> MergedTensor:
        """Combine the deltas of tensor ``name`` (one per adapter that stores it) with their weights."""
        if len(deltas) != len(weights):
            raise ValueError(f"got {len(deltas)} deltas but {len(weights)} weights for {name}; pass one per adapter")
        kept = [self._sparsify(name, index, delta) for index, delta in enumerate(common_rows(name, deltas))]
        if not self.needs_dense():
            return MergedTensor(kept, [float(w) for w in weights])
        options = {key: getattr(self.params, key) for key in combine_options(self.consensus)}
        merged = combine(self.consensus, [d.to_dense() for d in kept], list(weights), **options)
        return MergedTensor([SparseDelta.from_mask(merged, torch.ones_like(merged, dtype=torch.bool))], [1.0])

    def _sparsify(self, name: str, index: int, delta: SparseDelta) -> SparseDelta:
        density = getattr(self.params, "density", 1.0)
        if self.sparsify is None or density >= 1.0:
            return delta
        wanted = dataclasses.fields(get_method(self.sparsify).Params)
        method_params = {f.name: getattr(self.params, f.name) for f in wanted if hasattr(self.params, f.name)}
        method = create_method(self.sparsify, 1.0 - density, **method_params)
        return method.prune(TensorInfo(name=f"{name}#{index}", shape=tuple(delta.shape)), delta.to_dense(), density)


def common_rows(name: str, deltas: Sequence[SparseDelta]) -> list[SparseDelta]:
    """The deltas on one shape: an adapter that grew the vocabulary has more leading rows than one that did not
    (its flat indices address the same entries, so the shorter ones take the longer shape)."""
    shapes = {tuple(d.shape) for d in deltas}
    if len(shapes) == 1:
        return list(deltas)
    if len({s[1:] for s in shapes}) > 1 or any(not s for s in shapes):
        raise ValueError(f"the adapters store {name} with shapes {sorted(shapes)}; they do not fit one base")
    rows = max(s[0] for s in shapes)
    return [SparseDelta(d.indices, d.values, (rows, *d.shape[1:])) for d in deltas]


MERGE_MODES: Registry[type[MergeMode]] = Registry("merge mode")


def register_mode(cls: type[MergeMode]) -> type[MergeMode]:
    """Class decorator adding a merge mode (and its aliases) to ``MERGE_MODES``."""
    for key in (cls.name, *cls.aliases):
        MERGE_MODES.add(key, cls)
    return cls


def get_mode(name: str) -> type[MergeMode]:
    """The merge-mode class registered under ``name`` (or one of its aliases)."""
    return MERGE_MODES.lookup(name)


def mode_options(name: str) -> list[str]:
    """The options (``Params`` fields) that merge mode ``name`` takes."""
    return [f.name for f in dataclasses.fields(get_mode(name).Params)]


def create_mode(name: str, **params: Any) -> MergeMode:
    """Instantiate merge mode ``name`` with its options (validated; unknown options and bad choices are errors)."""
    cls = get_mode(name)
    known = mode_options(name)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"merge mode {name!r} has no option {unknown}; its options are {known or 'none'}")
    for f in dataclasses.fields(cls.Params):
        choices = f.metadata.get("choices")
        if f.name in params and choices and params[f.name] not in choices:
            raise ValueError(f"merge option {f.name}={params[f.name]!r} is not one of {list(choices)}")
    return cls(cls.Params(**params))


@register_mode
class SumMode(MergeMode):
    name = "sum"
    aliases = ("linear", "task_arithmetic")
    summary = "task arithmetic: sum_i w_i * delta_i (PEFT 'linear'); stays sparse"


@register_mode
class TiesMode(MergeMode):
    name = "ties"
    summary = "TIES: optional top-k trim at --density, sign election, disjoint mean"
    Params = TiesParams
    sparsify = "magnitude"
    consensus = "ties"


@register_mode
class MagnitudePruneMode(MergeMode):
    name = "magnitude_prune"
    summary = "PEFT 'magnitude_prune': top-k trim at --density, weighted sum"
    Params = DensityParams
    sparsify = "magnitude"


@register_mode
class DareLinearMode(MergeMode):
    name = "dare_linear"
    summary = "DARE: random drop (keep probability --density, rescale 1/p), weighted sum"
    Params = DropParams
    sparsify = "dare"


@register_mode
class DareTiesMode(MergeMode):
    name = "dare_ties"
    summary = "DARE drop, then TIES sign election and disjoint mean"
    Params = DropTiesParams
    sparsify = "dare"
    consensus = "ties"


@register_mode
class DellaMode(MergeMode):
    name = "della"
    summary = "DELLA: magnitude-ranked random drop (MagPrune), then TIES sign election and disjoint mean"
    Params = DellaParams
    sparsify = "della"
    consensus = "ties"


@register_mode
class DellaLinearMode(MergeMode):
    name = "della_linear"
    summary = "DELLA MagPrune drop, weighted sum"
    Params = DellaLinearParams
    sparsify = "della"
