"""Big CPU buffers: numpy-allocated, so that Linux backs them with huge pages (numpy asks for them above 4 MiB;
torch's allocator does not), which makes first touching a fresh 100 MiB buffer about twice as cheap; and scratch
buffers reused from one tensor to the next (no page faults at all)."""

from __future__ import annotations

import math

import numpy as np
import torch

HUGE_PAGE_MIN = 4 << 20  # numpy asks for huge pages from this size on


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor (fresh memory owned by the caller)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < HUGE_PAGE_MIN:  # small (or empty: numpy gives those stride 0): torch's own memory
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(np.empty(nbytes, dtype=np.uint8)).view(dtype).reshape(shape)


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


def to_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.float()``, exact: a CPU tensor of another dtype is widened into a fresh ``empty`` buffer by torch's
    multithreaded conversion (an fp32 tensor is returned as is)."""
    if tensor.dtype == torch.float32 or tensor.device.type != "cpu" or tensor.requires_grad:
        return tensor.float()
    return empty(tuple(tensor.shape), torch.float32).copy_(tensor)
