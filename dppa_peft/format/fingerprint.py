"""A cheap fingerprint of base weights: a digest of sampled values of the tensors an adapter changes.

The samples (``io.sampling``) come from checkpoint tensors while pruning and from an in-memory model when loading, so
loading an adapter on a different base is a clear error. Values are rounded to bf16 before hashing, so a base loaded
in fp32 or bf16 matches.
:func:`check_fingerprint` is the one check every path that puts an adapter on a base calls (PEFT loading, merging,
amplifying, export).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch

from ..core.errors import UserError
from ..io.sampling import Sampler, model_sampler

if TYPE_CHECKING:  # the config imports peft; computing a fingerprint does not need it
    from .config import SparseDeltaConfig


def fingerprint(samples: Mapping[str, bytes]) -> str:
    """Digest over (name, sample) pairs in name order."""
    digest = hashlib.sha256()
    for name in sorted(samples):
        digest.update(name.encode() + b"\0" + samples[name])
    return digest.hexdigest()[:32]


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
