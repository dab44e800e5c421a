"""Sparse tensor <-> compact stored form.

Three encodings, chosen per tensor by stored size:
- ``dense``: every value, no index (tensors outside the pruning scope);
- ``bitmask``: one bit per position (``ceil(n/8)`` bytes), best above ~12% density;
- ``gaps``: one byte per kept entry holding the gap to the previous kept position; a gap ``g`` is written as
  ``g // 255`` bytes of 255 followed by ``g % 255`` (so 255 never ends a gap), best at low density.
Never int64 coordinates. Optional uint8 partition ids (DPA) are stored per kept entry, and (format version 2)
optional float32 amplification factors ``[P, R]`` per tensor (see ``apply``).
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import numpy as np
import torch

from ..methods.base import SparseDelta


@functools.cache
def _bits() -> torch.Tensor:
    """Bit positions 0..7 (built on first use: importing this module does not load torch)."""
    return torch.arange(8, dtype=torch.uint8)


_ESCAPE = 255


def bitmask_encode(indices: torch.Tensor, numel: int) -> torch.Tensor:
    mask = torch.zeros(-(-numel // 8) * 8, dtype=torch.uint8)
    mask[indices] = 1
    return (mask.reshape(-1, 8) << _bits()).sum(dim=1, dtype=torch.uint8)


def bitmask_decode(packed: torch.Tensor, numel: int) -> torch.Tensor:
    if packed.device.type == "cpu" and numel:  # numpy: one unpack and one scan
        unpacked = np.unpackbits(packed.reshape(-1).numpy(), bitorder="little", count=numel)
        return torch.from_numpy(np.flatnonzero(unpacked))
    bits = (packed.reshape(-1, 1) >> _bits()) & 1
    return bits.reshape(-1)[:numel].nonzero().reshape(-1)


def _gaps(indices: torch.Tensor) -> torch.Tensor:
    """Entries skipped before each kept position (the first counts from position 0)."""
    if indices.device.type == "cpu" and indices.numel():
        positions = indices.numpy()
        gaps = np.empty_like(positions)
        gaps[0] = positions[0]
        np.subtract(positions[1:], positions[:-1], out=gaps[1:])
        gaps[1:] -= 1
        return torch.from_numpy(gaps)
    return indices.diff(prepend=indices.new_full((1,), -1)) - 1


def gaps_size(indices: torch.Tensor) -> int:
    return _gaps_size(_gaps(indices.long()))


def _gaps_size(gaps: torch.Tensor) -> int:
    if gaps.numel() == 0 or int(gaps.max()) < _ESCAPE:
        return gaps.numel()
    return int(gaps.numel() + (gaps // _ESCAPE).sum())


def gaps_encode(indices: torch.Tensor) -> torch.Tensor:
    return _gaps_encode(_gaps(indices.long()))


def _gaps_encode(gaps: torch.Tensor) -> torch.Tensor:
    if gaps.numel() == 0 or int(gaps.max()) < _ESCAPE:
        return gaps.to(torch.uint8)  # every gap fits in one byte
    lengths = gaps // _ESCAPE + 1
    out = torch.full((int(lengths.sum()),), _ESCAPE, dtype=torch.uint8)
    out[torch.cumsum(lengths, 0) - 1] = (gaps % _ESCAPE).to(torch.uint8)
    return out


def gaps_decode(packed: torch.Tensor) -> torch.Tensor:
    if packed.device.type == "cpu" and packed.numel() and int(packed.numpy().max()) < _ESCAPE:  # one byte per gap
        positions = np.cumsum(packed.numpy(), dtype=np.int64)
        positions += np.arange(positions.size, dtype=np.int64)
        return torch.from_numpy(positions)
    raw = packed.long()
    is_end = raw != _ESCAPE
    return torch.cumsum(raw + is_end, 0)[is_end] - 1


@dataclass
class EncodedTensor:
    """One stored delta tensor: values in the stored dtype, the index bytes, optional partition ids and optional
    float32 ``[P, R]`` amplification factors (partition × output row)."""

    encoding: str
    shape: tuple[int, ...]
    values: torch.Tensor
    index: torch.Tensor | None = None
    partition: torch.Tensor | None = None
    factors: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def stored_bytes(self) -> int:
        parts = [t for t in (self.values, self.index, self.partition, self.factors) if t is not None]
        return sum(t.numel() * t.element_size() for t in parts)

    def indices(self) -> torch.Tensor:
        """Ascending flat positions of the stored values."""
        if self.encoding == "dense":
            return torch.arange(self.numel)
        if self.index is None:
            raise ValueError(f"a {self.encoding!r} tensor needs its index bytes")
        if self.encoding == "bitmask":
            return bitmask_decode(self.index, self.numel)
        return gaps_decode(self.index)


def encode_dense(delta: torch.Tensor, value_dtype: torch.dtype) -> EncodedTensor:
    """A whole delta tensor, every value stored, no index (tensors kept dense outside the pruning scope)."""
    return EncodedTensor("dense", tuple(delta.shape), delta.reshape(-1).to(value_dtype))


def encode(
    sparse: SparseDelta, value_dtype: torch.dtype, dense: bool = False, partition: torch.Tensor | None = None
) -> EncodedTensor:
    """Encode kept entries in the cheapest index form (gaps or bitmask), or ``dense`` when every entry is kept."""
    values = sparse.values.to(value_dtype)
    part = partition.to(torch.uint8) if partition is not None else None
    if dense:
        if sparse.nnz != sparse.numel:
            raise ValueError("dense encoding needs every entry")
        return EncodedTensor("dense", sparse.shape, values, partition=part)
    gaps = _gaps(sparse.indices.long())
    if _gaps_size(gaps) < -(-sparse.numel // 8):
        return EncodedTensor("gaps", sparse.shape, values, _gaps_encode(gaps), part)
    return EncodedTensor("bitmask", sparse.shape, values, bitmask_encode(sparse.indices, sparse.numel), part)
