"""DPA factors: how the searched (raw) factors become the per-partition factors an adapter applies.

Partition 0 is the most important (kept at the highest pruning rate). Two combine modes (docs/algorithms.md §10.3):

- ``independent`` (default): partition ``i`` is scaled by its own factor ``r_i`` (the paper's "scaling only the
  newly included parameters");
- ``max``: the released ``enhance_offset.py``, where the candidate with the larger ``|·|`` wins entry by entry, so
  partition ``i`` gets ``max(r_i, r_{i+1}, …)`` (with two partitions: ``P_A`` gets ``max(r_A, r_B)``, ``P_B`` gets
  ``r_B``).

The loader never sees the mode: the adapter config stores the effective factor of every partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.choices import PARTITION_COMBINE_MODES


def check_factors(raw: Sequence[float]) -> list[float]:
    """Factors as floats; negative or non-finite factors are an error."""
    out = [float(f) for f in raw]
    if not out or any(not f >= 0 or f == float("inf") for f in out):
        raise ValueError(f"DPA factors must be finite numbers >= 0 (one per partition), got {list(raw)}")
    return out


def effective_factors(raw: Sequence[float], combine: str = "independent") -> list[float]:
    """The factor each partition id gets under ``combine``."""
    factors = check_factors(raw)
    if combine == "independent":
        return factors
    if combine == "max":
        return [max(factors[i:]) for i in range(len(factors))]
    raise ValueError(f"unknown combine mode {combine!r}; choose one of {PARTITION_COMBINE_MODES}")


def unpruned_factor(raw: Sequence[float], amplify_unpruned: bool) -> float:
    """Factor of the tensors kept outside the pruning scope: 1.0, or ``max(raw)`` like the released code."""
    return max(check_factors(raw)) if amplify_unpruned else 1.0


def amplification_record(
    partition_rates: Sequence[float],
    raw: Sequence[float],
    combine: str = "independent",
    amplify_unpruned: bool = False,
    search: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``amplification`` entry of an adapter config."""
    if len(raw) != len(partition_rates):
        raise ValueError(f"got {len(raw)} factors for {len(partition_rates)} partitions; pass one per partition")
    return {
        "partition_rates": [float(r) for r in partition_rates],
        "combine": combine,
        "raw_factors": check_factors(raw),
        "factors": effective_factors(raw, combine),
        "amplify_unpruned": bool(amplify_unpruned),
        "unpruned_factor": unpruned_factor(raw, amplify_unpruned),
        "search": search,
    }
