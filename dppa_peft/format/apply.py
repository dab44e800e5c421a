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

import torch

from ..methods.base import SparseDelta
from .encoding import EncodedTensor


def row_of(indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The output row of each flat index (0 for 0-D and 1-D tensors)."""
    if len(shape) < 2:
        return torch.zeros_like(indices)
    return torch.div(indices, math.prod(shape[1:]), rounding_mode="floor")


def effective_values(encoded: EncodedTensor, scalar_factors: Sequence[float] | torch.Tensor,
                     row_factors: torch.Tensor | None = None, indices: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 ``value · scalar_factors[partition] · row_factors[partition, row]`` of one stored tensor.

    ``scalar_factors`` is indexed by partition id (``[f]`` when no ids are stored). ``row_factors`` ([P, R] fp32,
    differentiable) defaults to the factors stored with the tensor (``encoded.factors``; none: no row factor).
    ``indices`` are the decoded flat positions, when the caller has them already.
    """
    values = encoded.values.float()
    partition = None if encoded.partition is None else encoded.partition.to(values.device).long()
    table = torch.as_tensor(scalar_factors, dtype=torch.float32, device=values.device)
    if partition is None:
        if table.numel() != 1:
            raise ValueError(f"{table.numel()} partition factors for a tensor without partition ids; pass one")
        values = values * table.reshape(())
    else:
        values = values * table[partition]
    rows = encoded.factors if row_factors is None else row_factors
    if rows is None:
        return values
    rows = rows.to(values.device)
    if rows.dim() != 2 or (partition is None and rows.shape[0] != 1):
        raise ValueError(f"row factors must be [P, R] with P = 1 when no partition ids are stored, got "
                         f"{list(rows.shape)}")
    part = torch.zeros_like(values, dtype=torch.long) if partition is None else partition
    if rows.shape[1] == 1:
        return values * rows[part, 0]
    if indices is None:
        indices = encoded.indices()
    return values * rows[part, row_of(indices.to(values.device).long(), encoded.shape)]


def add_sparse(target: torch.Tensor, deltas: Sequence[SparseDelta], weights: Sequence[float] | None = None) -> torch.Tensor:
    """``cast(target.float() + Σ w_i·δ_i)``: fp32 accumulation, one cast to ``target``'s dtype; a new tensor."""
    weights = [1.0] * len(deltas) if weights is None else list(weights)
    if len(weights) != len(deltas):
        raise ValueError(f"got {len(weights)} weights for {len(deltas)} deltas")
    out = target.float().reshape(-1)
    for delta, weight in zip(deltas, weights):  # out-of-place: ``target`` is never changed
        out = out.index_add(0, delta.indices.to(out.device).long(), delta.values.float().to(out.device) * weight)
    return out.reshape(target.shape).to(target.dtype)


def add_dense(target: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``cast(target.float() + delta)`` for a dense fp32 delta of ``target``'s shape (or of its gathered entries)."""
    return (target.float() + delta.float().to(target.device).reshape(target.shape)).to(target.dtype)
