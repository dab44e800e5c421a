"""A cheap fingerprint of base weights: sampled values of the tensors an adapter changes.

Computed from checkpoint tensors while pruning and from an in-memory model when loading, so loading an adapter on a
different base is a clear error. Values are rounded to bf16 before hashing, so a base loaded in fp32 or bf16 matches.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint

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


def checkpoint_sample(checkpoint: "Checkpoint", name: str) -> bytes:
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


def fingerprint(samples: Mapping[str, bytes]) -> str:
    """Digest over (name, sample) pairs in name order."""
    digest = hashlib.sha256()
    for name in sorted(samples):
        digest.update(name.encode() + b"\0" + samples[name])
    return digest.hexdigest()[:32]


def model_fingerprint(model: torch.nn.Module, tensor_names: list[str]) -> str | None:
    """Fingerprint of the named tensors of an in-memory model (None when some are missing or on the meta device)."""
    params: dict[str, torch.Tensor] = {
        n.replace(".base_layer.", "."): p for n, p in model.named_parameters(remove_duplicate=False)
    }
    params.update({n.replace(".base_layer.", "."): b for n, b in model.named_buffers(remove_duplicate=False)})
    chosen = {}
    for name in tensor_names:
        tensor = params.get(name)
        if tensor is None or tensor.device.type == "meta":
            return None
        chosen[name] = tensor_sample(tensor)
    return fingerprint(chosen)
