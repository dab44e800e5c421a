"""What the demo compares: the pruned variants of each domain fine-tune and the three-domain merges.

A :class:`PruneJob` is a pruning method plus an optional amplification: ``dpa`` (the paper's DPA: partition
factors searched on the dev tasks) or ``learned`` (factors per magnitude partition and output row learned by KL to
the dense fine-tune on the dev prompts). A :class:`MergeJob` merges the three domains' adapters of one prune variant
with one merge mode (the learned modes learn on the dev prompts too). Labels are what the report shows; nothing here
reads the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Amplification = Literal["none", "dpa", "learned"]
RATES = (0.5, 0.8, 0.9, 0.95, 0.99)
DELLA_EPSILON = 0.07  # DELLA's default half-window, narrowed where the density is smaller (rates above 0.93)
# learned amplification and the learned merge: four magnitude partitions of the kept entries (cumulative shares: the
# top 10% of them, the next 20%, 30%, 40%), a factor per partition and row; chosen on the dev split
# (bench/learn_dev.py, bench/merge_dev.py)
LEARNED_SHARES = (0.1, 0.3, 0.6, 1.0)


def partition_rates(rate: float, shares: tuple[float, ...]) -> list[float]:
    """Partition boundaries (pruning rates) holding cumulative ``shares`` of the entries kept at ``rate``:
    (0.1, 0.3, 0.6, 1.0) at 0.9 -> 0.99, 0.97, 0.94, 0.9."""
    return [round(1.0 - (1.0 - rate) * share, 10) for share in shares]


@dataclass(frozen=True)
class PruneJob:
    """``method`` at each demo rate (or only at ``rates``), then ``amplification``."""

    label: str
    method: str
    amplification: Amplification = "none"
    rates: tuple[float, ...] | None = None  # None: every demo rate

    def runs_at(self, rate: float) -> bool:
        return self.rates is None or rate in self.rates

    def params(self, rate: float) -> dict[str, Any]:
        """The method's parameters at ``rate`` (DELLA's keep window must fit inside (0, 1]) and, for learned
        amplification, its partition rates (``LEARNED_SHARES``)."""
        params: dict[str, Any] = {}
        if self.method == "della":
            params["epsilon"] = min(DELLA_EPSILON, (1.0 - rate) / 2)
        if self.amplification == "learned":
            params["partition_rates"] = partition_rates(rate, LEARNED_SHARES)
        return params


@dataclass(frozen=True)
class MergeJob:
    """The three domains' ``source`` adapters merged with merge mode ``mode`` (and its ``options``)."""

    source: str  # the PruneJob label whose adapters are merged
    mode: str = "sum"
    options: dict[str, Any] = field(default_factory=dict)
    suffix: str = ""
    partition_shares: tuple[float, ...] = ()  # learned: magnitude partitions (cumulative shares of the kept entries)

    def options_at(self, rate: float) -> dict[str, Any]:
        """The mode's options for adapters pruned at ``rate``: ``partition_shares`` become ``learn_partition_rates``
        (``partition_rates``)."""
        if not self.partition_shares:
            return dict(self.options)
        return {**self.options, "learn_partition_rates": partition_rates(rate, self.partition_shares)}

    @property
    def label(self) -> str:
        """``"<source> (<mode>[ <suffix>])"``, e.g. ``"magnitude (ties)"``."""
        return f"{self.source} ({self.mode}{' ' + self.suffix if self.suffix else ''})"

    @property
    def learns(self) -> bool:
        return self.mode in ("learned", "adamerging")


PRUNE_VARIANTS = {
    v.label: v
    for v in (
        PruneJob("magnitude", "magnitude"),
        PruneJob("owl", "owl"),
        PruneJob("dare", "dare"),
        PruneJob("della", "della"),
        PruneJob("dp", "dp"),
        PruneJob("dppa", "dp", "dpa", rates=(0.8, 0.9, 0.95, 0.99)),  # 0.5 = 5 partitions: 51 dev-task evaluations
        PruneJob("magnitude+learned", "magnitude", "learned"),
        PruneJob("dp+learned", "dp", "learned", rates=(0.9, 0.95, 0.99)),
    )
}
MERGE_VARIANTS = {
    v.label: v
    for v in (
        MergeJob("dare"),
        MergeJob("dppa"),
        MergeJob("magnitude", "ties"),
        MergeJob("dare", "dare_ties"),
        MergeJob("della", "della"),
        MergeJob("magnitude+learned"),
        # four magnitude partitions per row and the dense tensors' rows too (chosen on the dev split: bench/merge_dev.py)
        MergeJob("magnitude+learned", "learned", partition_shares=LEARNED_SHARES),
        MergeJob("magnitude", "adamerging", {"adamerging_granularity": "task"}, "task"),
        MergeJob("magnitude", "adamerging", {"adamerging_granularity": "layer"}, "layer"),
    )
}
