"""Candidate models for the DPA search, built in place: the base is loaded once and factors only rewrite the entries
an adapter touches (``W[idx] = W_B[idx] + values · factor[partition]``), so no candidate is reloaded from disk.

The arithmetic is the kernel's (``kernel.weights``: effective values and the base value added in fp32, cast once), so
a candidate equals loading the written adapter with the same factors, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..io.models import load_causal_lm, resize_vocabulary
from ..core.devices import resolve_device
from ..kernel.weights import add_dense, effective_values
from ..format.encoding import EncodedTensor
from ..publish.adapter import SparseDeltaAdapter
from ..format.validate import check_fits_base
from ..format.fingerprint import check_fingerprint
from ..io.sampling import model_sampler
from ..format.amplification import effective_factors, unpruned_factor
from ..format.partitions import Partitions


@dataclass
class _Entry:
    """One adapter tensor merged into a model parameter."""

    flat: torch.Tensor  # the parameter's storage, flattened (a view)
    indices: torch.Tensor
    encoded: EncodedTensor  # values (fp32), partition ids and stored factors on the parameter's device
    base_values: torch.Tensor  # the base weights at ``indices``, in the parameter's dtype
    pruned: bool
    applied: list[float] | None = None


def load_base_model(
    base: str | os.PathLike,
    adapter: SparseDeltaAdapter,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    revision: str | None = None,
    token: str | bool | None = None,
) -> nn.Module:
    """The adapter's base model, checked against its fingerprint and with the vocabulary the adapter needs."""
    model = load_causal_lm(base, dtype=dtype, revision=revision, token=token)
    check_fits_base(adapter.config, {n: tuple(p.shape) for n, p in model.named_parameters()}, adapter.ref, str(base))
    check_fingerprint(adapter.config, model_sampler(model), adapter.ref, str(base))
    resize_vocabulary(model, adapter.config.vocab_size)
    return model.to(resolve_device(device)).eval()


class AmplifiedModel:
    """A base model with an adapter merged in place; ``apply(factors)`` switches to another candidate cheaply."""

    def __init__(
        self,
        model: nn.Module,
        adapter: SparseDeltaAdapter,
        partitions: Partitions,
        combine: str = "independent",
        amplify_unpruned: bool = False,
    ) -> None:
        self.model = model
        self.partitions = partitions
        self.combine = combine
        self.amplify_unpruned = amplify_unpruned
        params = dict(model.named_parameters())
        self._entries: list[_Entry] = []
        with torch.no_grad():
            for name, record in adapter.config.tensors.items():
                if name not in params:
                    raise ValueError(
                        f"adapter tensor {name!r} is not a parameter of the model; the adapter does not fit this base"
                    )
                param = params[name]
                if not param.is_contiguous():
                    raise ValueError(f"parameter {name!r} is not contiguous; cannot update it in place")
                flat = param.data.view(-1)
                encoded = adapter.encoded(name)
                indices = encoded.indices().to(flat.device)
                if flat.numel() < 2**31:
                    indices = indices.to(torch.int32)
                ids = partitions.ids.get(name)
                if ids is None and record.pruned and partitions.count > 1:
                    raise ValueError(f"pruned tensor {name!r} has no partition ids for rates {partitions.rates}")
                on_device = EncodedTensor(
                    encoded.encoding,
                    encoded.shape,
                    encoded.values.to(flat.device, torch.float32),
                    partition=None if ids is None else ids.to(flat.device),
                    factors=None if encoded.factors is None else encoded.factors.to(flat.device),
                )
                self._entries.append(
                    _Entry(
                        flat=flat,
                        indices=indices,
                        encoded=on_device,
                        base_values=flat[indices].clone(),
                        pruned=bool(record.pruned),
                    )
                )
        self.factors: list[float] | None = None
        self.apply([1.0] * partitions.count)

    def apply(self, factors: Sequence[float]) -> nn.Module:
        """Set the raw factors (one per partition, before the combine rule) and return the model."""
        if len(factors) != self.partitions.count:
            raise ValueError(f"got {len(factors)} factors for {self.partitions.count} partitions")
        effective = effective_factors(factors, self.combine)
        outside = [unpruned_factor(factors, self.amplify_unpruned)]
        with torch.no_grad():
            for entry in self._entries:
                wanted = effective if entry.pruned else outside
                if entry.applied == wanted:
                    continue
                values = effective_values(entry.encoded, wanted, indices=entry.indices)
                entry.flat[entry.indices] = add_dense(entry.base_values, values)
                entry.applied = list(wanted)
        self.factors = [float(f) for f in factors]
        return self.model
