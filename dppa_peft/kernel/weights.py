"""The one kernel that turns stored deltas into weights (docs/algorithms.md §13; every load, merge and export path
uses it).

Effective stored value (format version 2)::

    value · scalar_factors[partition] · row_factors[partition, row(index)]

in fp32, in that order; ``row(index) = index // prod(shape[1:])`` for a ≥2-D tensor whose factor table has more than
one column (R > 1), else 0 (one factor per partition). ``partition`` is 0 when the tensor stores no partition ids.

Adding deltas to a weight has ONE dtype order: ``cast(target.float() + Σ w_i·δ_i)``, accumulated in fp32, one
adapter after the other (each adapter's indices are unique, so the order is deterministic on CUDA too), and cast
to the target's dtype once. So ``PeftModel.merge_and_unload``, the unmerged forward, ``load_merged``,
``merge_to_folder``, the DPA candidates and the SUPERTUNING export give bit-identical weights in fp32 and bf16.
The functions are plain differentiable torch ops: learned amplification back-propagates through them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..core.buffers import to_float32
from ..methods.base import FullDelta, SparseDelta
from ..methods.selection import flat_nonzero
from ..format.encoding import EncodedTensor

if TYPE_CHECKING:  # the adapter folder imports peft; option parsing (``--help``) imports this module
    from ..format.io import AdapterFolder


UNION_LIMIT = 16


def row_of(indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The output row of each flat index (0 for 0-D and 1-D tensors)."""
    if len(shape) < 2:
        return torch.zeros_like(indices)
    return torch.div(indices, math.prod(shape[1:]), rounding_mode="floor")


def effective_values(
    encoded: EncodedTensor,
    scalar_factors: Sequence[float] | torch.Tensor,
    row_factors: torch.Tensor | None = None,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 ``value · scalar_factors[partition] · row_factors[partition, row]`` of one stored tensor.

    ``scalar_factors`` is indexed by partition id (``[f]`` when no ids are stored). ``row_factors`` ([P, R] fp32,
    differentiable) defaults to the factors stored with the tensor (``encoded.factors``; none: no row factor).
    ``indices`` are the decoded flat positions, when the caller has them already.
    """
    values = to_float32(encoded.values)
    partition = None if encoded.partition is None else encoded.partition.to(values.device).long()
    table = torch.as_tensor(scalar_factors, dtype=torch.float32, device=values.device)
    if partition is None:
        if table.numel() != 1:
            raise ValueError(f"{table.numel()} partition factors for a tensor without partition ids; pass one")
        if isinstance(scalar_factors, torch.Tensor) or float(table) != 1.0:  # x · 1.0 == x: no pass for it
            values = values * table.reshape(())
    else:
        values = values * table[partition]
    rows = encoded.factors if row_factors is None else row_factors
    if rows is None:
        return values
    rows = rows.to(values.device)
    if rows.dim() != 2 or (partition is None and rows.shape[0] != 1):
        raise ValueError(
            f"row factors must be [P, R] with P = 1 when no partition ids are stored, got {list(rows.shape)}"
        )
    part = torch.zeros_like(values, dtype=torch.long) if partition is None else partition
    if rows.shape[1] == 1:
        return values * rows[part, 0]
    if indices is None:
        indices = encoded.indices()
    return values * rows[part, row_of(indices.to(values.device).long(), encoded.shape)]


def adapter_delta(adapter: "AdapterFolder", name: str) -> SparseDelta:
    """One stored delta of ``adapter`` with every amplification factor applied (fp32 effective values)."""
    encoded, indices = adapter.stored(name)
    factors = adapter.scalar_factors(name)
    if indices is None:  # stored dense: positions implicit, no index tensor travels with a dense delta
        return FullDelta(effective_values(encoded, factors), encoded.shape)
    return SparseDelta(indices, effective_values(encoded, factors, indices=indices), encoded.shape)


def add_sparse(
    target: torch.Tensor, deltas: Sequence[SparseDelta], weights: Sequence[float] | None = None
) -> torch.Tensor:
    """``cast(target.float() + Σ w_i·δ_i)``: fp32 accumulation, one cast to ``target``'s dtype; a new tensor."""
    support, merged = _accumulate(target, deltas, weights)
    if support is None:
        return merged.reshape(target.shape).to(target.dtype)
    out = target.reshape(-1).clone()
    out[support] = merged.to(target.dtype)
    return out.reshape(target.shape)


def add_sparse_(
    target: torch.Tensor, deltas: Sequence[SparseDelta], weights: Sequence[float] | None = None
) -> torch.Tensor:
    """``add_sparse`` written into ``target`` (contiguous) in place: only the touched entries are read and written,
    so merging into a loaded model needs no second copy of any weight. Returns ``target``."""
    if not target.is_contiguous():
        return target.copy_(add_sparse(target, deltas, weights))
    support, merged = _accumulate(target, deltas, weights)
    flat = target.view(-1)
    if support is None:
        flat.copy_(merged)
    else:
        flat[support] = merged.to(target.dtype)
    return target


def _accumulate(
    target: torch.Tensor, deltas: Sequence[SparseDelta], weights: Sequence[float] | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(support, fp32 sums)``: the touched flat positions (ascending; None = every entry) and
    ``target.float() + Σ w_i·δ_i`` there, adapter after adapter. Entries outside the support keep ``target``'s value,
    which is what ``cast(target.float())`` gives them, so only the support is ever widened to fp32."""
    weights = [1.0] * len(deltas) if weights is None else list(weights)
    if len(weights) != len(deltas):
        raise ValueError(f"got {len(weights)} weights for {len(deltas)} deltas")
    flat = target.reshape(-1)
    support = _support(flat, deltas)
    merged = to_float32(flat) if support is None else flat[support].float()
    if support is None and merged.data_ptr() == flat.data_ptr():
        merged = merged.clone()  # an fp32 target: never changed in place by the sums below
    for delta, weight in zip(deltas, weights):
        values = delta.values.float().to(flat.device)
        unit = isinstance(weight, (int, float)) and weight == 1.0  # x · 1.0 == x: no pass for it
        values = values if unit else values * weight
        if isinstance(delta, FullDelta) or (support is not None and len(deltas) == 1):
            merged.add_(values)  # the delta covers every position of ``merged``, in order
            continue
        indices = delta.indices.to(flat.device).long()
        positions = indices if support is None else torch.searchsorted(support, indices)
        merged.index_add_(0, positions, values)  # ``merged`` is this call's own buffer: in place is safe
    return support, merged


def _support(flat: torch.Tensor, deltas: Sequence[SparseDelta]) -> torch.Tensor | None:
    """The union of the deltas' positions, ascending; None (every entry) when a delta covers them all or when the
    deltas together touch more than ``1/UNION_LIMIT`` of them (a whole-tensor pass is then cheaper than locating
    each delta's positions in the union)."""
    if any(isinstance(delta, FullDelta) for delta in deltas):
        return None
    if len(deltas) == 1:
        return deltas[0].indices.to(flat.device).long()
    if sum(delta.nnz for delta in deltas) * UNION_LIMIT > flat.numel():
        return None
    indices = [delta.indices.to(flat.device).long() for delta in deltas]
    touched = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    for positions in indices:
        touched[positions] = True
    return flat_nonzero(touched)


def add_dense(target: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``cast(target.float() + delta)`` for a dense fp32 delta of ``target``'s shape (or of its gathered entries)."""
    return (target.float() + delta.float().to(target.device).reshape(target.shape)).to(target.dtype)
