"""A cheap fingerprint of base weights: sampled values of the tensors an adapter changes.

Computed from checkpoint tensors while pruning and from an in-memory model when loading, so loading an adapter on a
different base is a clear error. Values are rounded to bf16 before hashing, so a base loaded in fp32 or bf16 matches.
:func:`check_fingerprint` is the one check every path that puts an adapter on a base calls (PEFT loading, merging,
amplifying, export).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import torch

from ..core.errors import UserError

if TYPE_CHECKING:
    from ..io.checkpoint import Checkpoint
    from .config import SparseDeltaConfig

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


def sampled_fingerprint(names: Iterable[str], sample: Sampler) -> str | None:
    """Fingerprint of the named tensors (None when ``sample`` cannot give one of them)."""
    samples = {}
    for name in names:
        value = sample(name)
        if value is None:
            return None
        samples[name] = value
    return fingerprint(samples)


def model_fingerprint(model: torch.nn.Module, tensor_names: list[str]) -> str | None:
    """Fingerprint of the named tensors of an in-memory model (None when some are missing or on the meta device)."""
    return sampled_fingerprint(tensor_names, model_sampler(model))


class BaseModelMismatchError(UserError):
    """The adapter was made from a different base model."""


def check_fingerprint(config: "SparseDeltaConfig", sample: Sampler, adapter: str, base: str) -> None:
    """Raise when the base (``sample`` gives its tensors' samples) is not the one the adapter records a fingerprint
    of. Nothing to check when the adapter records none, or when the base cannot give every sample (meta device)."""
    expected = config.base_fingerprint
    if not expected:
        return
    found = sampled_fingerprint(sorted(config.tensors), sample)
    if found is not None and found != expected:
        raise BaseModelMismatchError(
            f"{base} is not the base {adapter} was pruned from ({config.base_model_name_or_path!r}): fingerprint "
            f"{found} != {expected}; load the adapter on the base model it was pruned from (base= / --base)"
        )
