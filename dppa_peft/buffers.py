"""Big CPU buffers: numpy-allocated, so that Linux backs them with huge pages (numpy asks for them above 4 MiB;
torch's allocator does not), which makes first touching a fresh 100 MiB buffer about twice as cheap; and scratch
buffers reused from one tensor to the next (no page faults at all)."""

from __future__ import annotations

import math

import numpy as np
import torch


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor (fresh memory owned by the caller)."""
    count = math.prod(shape)
    raw = torch.from_numpy(np.empty(count * dtype.itemsize, dtype=np.uint8))
    return raw.view(dtype).reshape(shape)


class Scratch:
    """Named buffers reused across calls; ``get`` hands out a view that is only valid until the next ``get`` of
    the same name (the caller must not keep it)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            buffer = self._buffers[name] = empty((max(nbytes, 1),), torch.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape)

    def clear(self) -> None:
        """Free every buffer."""
        self._buffers.clear()
