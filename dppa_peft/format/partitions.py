"""The DPA partitions of an existing adapter: its stored partition ids, or ids re-derived from its stored entries as
its pruning method ranks them (``methods.partitions``; docs/algorithms.md §10.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.errors import UserError
from ..methods.partitions import RATE_TOLERANCE, check_partition_rates, default_partition_rates, ids_from_membership
from ..methods.registry import recorded_method
from .io import AdapterFolder


@dataclass
class Partitions:
    """Partition ids (uint8, per kept entry) and boundary densities of every pruned tensor of an adapter."""

    rates: list[float]
    ids: dict[str, torch.Tensor] = field(default_factory=dict)
    densities: dict[str, list[float]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.rates)


def _derive_members(adapter: AdapterFolder, name: str, densities: list[float]) -> list[torch.Tensor]:
    """Boundary membership re-derived from the stored entries, as the adapter's pruning method ranks them."""
    cls, params = recorded_method(adapter.config.method)
    encoded = adapter.encoded(name)
    return cls.stored_members(name, encoded.shape, encoded.indices(), encoded.values, densities, params)


def adapter_partitions(adapter: AdapterFolder, rates: Sequence[float] | None = None) -> Partitions:
    """Partitions of an existing adapter's pruned tensors (default rates: 0.9, 0.8, … down to its rate)."""
    if adapter.config.merge:
        raise UserError(
            f"{adapter.ref} is a merged adapter (mode {adapter.config.merge.get('mode')!r}): it has no "
            "pruning rate to partition; amplify the adapters before merging them"
        )
    rate = float(adapter.config.method["rate"])
    rates = check_partition_rates(default_partition_rates(rate) if rates is None else rates, rate)
    partitions = Partitions(rates)
    if len(rates) == 1:
        return partitions
    stored = adapter.config.amplification or {}
    stored_rates = stored.get("partition_rates") or []
    use_stored = len(stored_rates) == len(rates) and all(
        abs(a - b) <= RATE_TOLERANCE for a, b in zip(stored_rates, rates)
    )
    for name, record in adapter.config.tensors.items():
        if not record.pruned:
            continue
        ids = adapter.encoded(name).partition if use_stored and record.partition else None
        if ids is not None:
            partitions.ids[name] = ids
            partitions.densities[name] = list(record.require(name, "partition_densities", "stored partitions need"))
            continue
        if not recorded_method(adapter.config.method)[0].plan_shifts_with_rate:
            raise UserError(
                f"{name}: the {adapter.config.method.get('name')!r} plan does not shift with the rate, so "
                "partition densities cannot be re-derived; prune again with partitions stored"
            )
        unclipped = record.require(name, "unclipped_density", "re-deriving its partitions needs")
        floor = adapter.config.method.get("params", {}).get("min_density") or 0.0  # DP's optional density floor
        densities = [min(1.0, max(floor, unclipped + rate - r)) for r in rates]
        members = _derive_members(adapter, name, densities)
        partitions.ids[name] = ids_from_membership(members, record.nnz, name)
        partitions.densities[name] = densities
    return partitions
