"""What the demo compares: the pruned variants of each domain fine-tune and the three-domain merges.

A :class:`PruneVariant` is a pruning method plus an optional amplification (``dpa``: the paper's searched partition
factors; ``learned``: per-row factors learned by KL to the dense fine-tune on dev prompts). A :class:`MergeVariant`
merges the three domains' adapters of one prune variant with one merge mode. Labels are what the report shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Amplification = Literal["none", "dpa", "learned"]
ALL_RATES = (0.5, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class PruneVariant:
    """One pruned variant: ``method`` at each demo rate (or only ``rates``), then ``amplification``."""

    label: str
    method: str
    amplification: Amplification = "none"
    rates: tuple[float, ...] | None = None  # None: every demo rate

    def runs_at(self, rate: float) -> bool:
        return self.rates is None or rate in self.rates


@dataclass(frozen=True)
class MergeVariant:
    """The three domains' ``source`` adapters merged with merge mode ``mode`` (and its ``options``)."""

    label: str
    source: str  # the PruneVariant label whose adapters are merged
    mode: str = "sum"
    options: dict[str, Any] = field(default_factory=dict)
    rates: tuple[float, ...] | None = None

    def runs_at(self, rate: float) -> bool:
        return self.rates is None or rate in self.rates
