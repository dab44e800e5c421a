"""DPA partitions: one ranking per tensor cut at pruning-rate boundaries (docs/algorithms.md §10.1).

Boundaries are pruning rates, most important first: for target α the default is 0.9, 0.8, … down to α (target 0.9:
one partition; target 0.8: ``P_A`` = kept at 0.9, ``P_B`` = the next 10%). Each boundary uses the method's own
density at that rate (``method.plan(info, rate)``), so DP's per-linear densities carry over to every partition.
Partition ``i`` holds the entries kept at ``rates[i]`` but not at ``rates[i-1]``; ids are uint8, one per kept entry.

Two ways to get them, one per situation:

- while pruning (``partition_ids``): the method prunes at every boundary density and the kept sets must nest;
- from an existing adapter (``format.partitions.adapter_partitions``): stored ids when the adapter has them for these rates, else
  re-derived from the stored entries by the method's own ``stored_members`` (its ``ranking`` capability):
  magnitude-ranked methods (magnitude, ties, dp, owl with ``tie_mode='index'``) rank ``|stored value|`` with the
  lowest index first among ties; DARE recomputes its uniform draws from (seed, tensor name). Boundary densities
  come from the recorded ``unclipped_density`` shifted by the rate difference, valid for every method whose
  ``plan_shifts_with_rate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import PruningMethod, SparseDelta
from ..delta.scope import TensorInfo

TOP_RATE = 0.9
RATE_STEP = 0.1
MAX_PARTITIONS = 256  # partition ids are stored as uint8
RATE_TOLERANCE = 1e-9


def default_partition_rates(rate: float) -> list[float]:
    """0.9, 0.8, … (every rate above ``rate``), then ``rate`` itself: 0.9 -> [0.9]; 0.8 -> [0.9, 0.8]."""
    rates = []
    for step in range(round(TOP_RATE / RATE_STEP) + 1):
        boundary = round(TOP_RATE - step * RATE_STEP, 10)
        if boundary <= rate + RATE_TOLERANCE:
            break
        rates.append(boundary)
    return rates + [float(rate)]


def check_partition_rates(rates: Sequence[float], rate: float) -> list[float]:
    """Validate boundaries: strictly decreasing pruning rates in [0, 1] that end at the target ``rate``."""
    out = [float(r) for r in rates]
    if not out or len(out) > MAX_PARTITIONS:
        raise ValueError(f"pass between 1 and {MAX_PARTITIONS} partition rates, got {len(out)}")
    if any(not 0.0 <= r <= 1.0 for r in out) or any(a <= b for a, b in zip(out, out[1:])):
        raise ValueError(
            f"partition rates must be strictly decreasing pruning rates in [0, 1] (most important "
            f"first, e.g. 0.9 0.8), got {out}"
        )
    if abs(out[-1] - rate) > RATE_TOLERANCE:
        raise ValueError(
            f"the last partition rate must be the target pruning rate {rate}, got {out}; e.g. "
            f"{default_partition_rates(rate)}"
        )
    return out


def nested_methods() -> list[str]:
    """The registered methods whose kept sets nest across densities."""
    from .registry import METHODS

    return sorted(name for name, cls in METHODS.items() if cls.nested)


def require_nested(method: PruningMethod) -> None:
    """DPA needs kept sets that nest across rates; say which methods do when this one does not."""
    if not method.nested:
        raise ValueError(
            f"pruning method {method.name!r} does not keep nested sets across pruning rates, so DPA partitions are "
            f"undefined for it; amplify an adapter pruned with a nested method ({', '.join(nested_methods())})"
        )


def ids_from_membership(members: Sequence[torch.Tensor], nnz: int, what: str) -> torch.Tensor:
    """Partition id per kept entry from boolean membership at each inner boundary (most important first)."""
    ids = torch.full((nnz,), len(members), dtype=torch.uint8)
    wider = torch.ones(nnz, dtype=torch.bool)
    for pid in range(len(members) - 1, -1, -1):
        member = members[pid]
        if bool((member & ~wider).any()):
            raise ValueError(
                f"{what}: the kept set at partition boundary {pid} is not inside the next one; the "
                "partitions do not nest"
            )
        ids[member] = pid
        wider = member
    return ids


def partition_ids(
    method: PruningMethod, info: TensorInfo, delta: torch.Tensor, kept: SparseDelta, rates: Sequence[float]
) -> tuple[torch.Tensor, list[float]]:
    """Partition ids of the entries ``kept`` at the target rate (``rates[-1]``), and each boundary's density."""
    require_nested(method)
    densities = [method.plan(info, r).density for r in rates]
    members = []
    for density in densities[:-1]:
        inner = method.prune(info, delta, density).indices.to(kept.indices.device)
        position = torch.searchsorted(kept.indices, inner)
        inside = position < kept.nnz
        if not bool(inside.all()) or not torch.equal(kept.indices[position], inner):
            raise ValueError(
                f"{info.name}: method {method.name!r} kept entries at density {density:.4g} that it "
                "drops at the target rate; its kept sets are not nested"
            )
        member = torch.zeros(kept.nnz, dtype=torch.bool, device=position.device)
        member[position] = True
        members.append(member.cpu())
    return ids_from_membership(members, kept.nnz, info.name), densities
