"""Sampled values of base weights, the input of the base fingerprint (``format.fingerprint``) and of the Hub check of
a base's id (``io.base_ref``): 16 evenly spaced values of a tensor, rounded to bf16, with its shape.

Read from a checkpoint (only the rows holding the sampled values), from an in-memory model or from a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .checkpoint import Checkpoint

#: A tensor's sample by name (``tensor_sample`` bytes), or None when the base cannot give it (missing, on meta).
Sampler = Callable[[str], "bytes | None"]

SAMPLES_PER_TENSOR = 16


def sample_positions(numel: int) -> torch.Tensor:
    """The flat positions a sample reads: 16 evenly spaced (all of them below 16 entries)."""
    count = min(numel, SAMPLES_PER_TENSOR)
    # float64: a float32 linspace cannot address positions above 2^24 (it rounds n - 1 up to n).
    return torch.linspace(0, numel - 1, steps=count, dtype=torch.float64).round().long()


def sample_bytes(shape: tuple[int, ...], values: torch.Tensor) -> bytes:
    """The sample of a tensor of ``shape`` whose values at :func:`sample_positions` are ``values``."""
    values = values.to("cpu", torch.float32).to(torch.bfloat16).view(torch.int16)
    return repr(tuple(shape)).encode() + values.numpy().tobytes()


def tensor_sample(tensor: torch.Tensor) -> bytes:
    """Name-independent sample: shape plus 16 evenly spaced values rounded to bf16."""
    flat = tensor.detach().reshape(-1)
    return sample_bytes(tuple(tensor.shape), flat[sample_positions(flat.numel())])


def checkpoint_sample(checkpoint: Checkpoint, name: str) -> bytes:
    """``tensor_sample(checkpoint.read(name))`` from the (at most 16) rows holding the sampled values."""
    shape = tuple(checkpoint.shape(name))
    numel = math.prod(shape)
    if len(shape) < 2 or numel == 0:
        return tensor_sample(checkpoint.read(name))
    row = numel // shape[0]
    values = [
        checkpoint.read_rows(name, p // row, p // row + 1).reshape(-1)[p % row]
        for p in sample_positions(numel).tolist()
    ]
    return sample_bytes(shape, torch.stack(values))


def model_sampler(model: torch.nn.Module) -> Sampler:
    """The samples of an in-memory model's tensors by name (None when missing or on the meta device)."""
    tensors: dict[str, torch.Tensor] = {
        n.replace(".base_layer.", "."): p for n, p in model.named_parameters(remove_duplicate=False)
    }
    tensors.update({n.replace(".base_layer.", "."): b for n, b in model.named_buffers(remove_duplicate=False)})

    def sample(name: str) -> bytes | None:
        tensor = tensors.get(name)
        return None if tensor is None or tensor.device.type == "meta" else tensor_sample(tensor)

    return sample
