"""The results model of an evaluation: the variants, their scores, and their Task- / Domain-Ratios (paper eq. 7-8)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from dppa_peft.lmeval.ratios import domain_ratio, format_percent, task_ratio

Kind = Literal["prune", "merge"]
UNDEFINED = "n/a"  # a ratio with a dense score of 0


@dataclass(frozen=True)
class Variant:
    """One evaluated model: a pruned domain fine-tune, or a merge of several pruned fine-tunes.

    ``rate`` is the fraction of delta parameters removed (0.9 = 90 %). ``domains`` is the one pruned domain for
    ``kind="prune"``, or the merged domains (two or more) for ``kind="merge"``.
    """

    method: str
    rate: float
    kind: Kind
    domains: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.method:
            raise ValueError("Variant.method must be a non-empty name, e.g. 'dppa'")
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"Variant.rate must be a fraction in [0, 1), e.g. 0.9 for 90 %; got {self.rate!r}")
        if self.kind not in ("prune", "merge"):
            raise ValueError(f"Variant.kind must be 'prune' or 'merge', got {self.kind!r}")
        object.__setattr__(self, "domains", tuple(self.domains))
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"Variant.domains has duplicates: {self.domains}")
        if self.kind == "prune" and len(self.domains) != 1:
            raise ValueError(f"a prune Variant names exactly one domain (the pruned fine-tune's), got {self.domains}")
        if self.kind == "merge" and len(self.domains) < 2:
            raise ValueError(f"a merge Variant names the two or more merged domains, got {self.domains}")

    @property
    def label(self) -> str:
        """``"<method> <rate>%"``, e.g. ``"dppa 90%"``."""
        return f"{self.method} {rate_label(self.rate)}"


@dataclass(frozen=True)
class VariantScores:
    """The per-task scores of one variant: every task of ``variant.domains``, and no others."""

    variant: Variant
    scores: Mapping[str, float]
    stderr: Mapping[str, float] = field(default_factory=dict)  # lm-eval's standard errors, where reported


@dataclass(frozen=True)
class EvalResults:
    """Everything a report needs.

    ``dense[domain][task]`` is the dense fine-tune of ``domain`` scored on ``task``; its key order is the
    display order of domains and tasks. ``base`` has the same shape, for the base model. ``metric`` names the
    lm-eval metric the scores are (for the report's text only). ``dense_stderr`` and ``base_stderr`` hold lm-eval's
    standard errors of those scores, where reported (same shape, entries may be missing).
    """

    dense: Mapping[str, Mapping[str, float]]
    base: Mapping[str, Mapping[str, float]]
    variants: Sequence[VariantScores] = field(default_factory=tuple)
    metric: str = "acc"
    dense_stderr: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    base_stderr: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_domains()
        seen: set[Variant] = set()
        for entry in self.variants:
            self._check_variant(entry, seen)

    def _check_domains(self) -> None:
        """Dense and base cover the same domains and tasks; every task belongs to one domain; scores are sane."""
        if not self.dense:
            raise ValueError("EvalResults.dense is empty: give each domain's dense fine-tune scores per task")
        if set(self.base) != set(self.dense):
            raise ValueError(f"base and dense must have the same domains; got {list(self.base)} and {list(self.dense)}")
        tasks = [task for scores in self.dense.values() for task in scores]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"a task may belong to one domain only; tasks per domain: {tasks}")
        for domain, scores in self.dense.items():
            if not scores:
                raise ValueError(f"domain {domain!r} has no tasks in EvalResults.dense")
            if set(self.base[domain]) != set(scores):
                raise ValueError(
                    f"base scores for domain {domain!r} must cover exactly its tasks {sorted(scores)}; "
                    f"got {sorted(self.base[domain])}"
                )
            check_scores(f"dense scores of {domain!r}", scores)
            check_scores(f"base scores of {domain!r}", self.base[domain])

    def _check_variant(self, entry: VariantScores, seen: set[Variant]) -> None:
        """Reject unknown domains, missing or extra task scores, and repeated variants."""
        variant = entry.variant
        unknown = [d for d in variant.domains if d not in self.dense]
        if unknown:
            raise ValueError(f"{variant.label}: unknown domain(s) {unknown}; known: {list(self.dense)}")
        expected = {task for domain in variant.domains for task in self.dense[domain]}
        if set(entry.scores) != expected:
            raise ValueError(
                f"{variant.label} ({variant.kind}, {'+'.join(variant.domains)}): scores must cover exactly the tasks "
                f"{sorted(expected)}; missing {sorted(expected - set(entry.scores))}, "
                f"unexpected {sorted(set(entry.scores) - expected)}"
            )
        if variant in seen:
            raise ValueError(f"{variant.label} ({variant.kind}, {'+'.join(variant.domains)}) is given twice")
        seen.add(variant)
        check_scores(f"scores of {variant.label} ({variant.kind})", entry.scores)


def check_scores(where: str, scores: Mapping[str, float]) -> None:
    """Reject scores that are not finite numbers >= 0, naming ``where``."""
    bad = {task: value for task, value in scores.items() if not (math.isfinite(value) and value >= 0)}
    if bad:
        raise ValueError(f"{where} must be finite numbers >= 0; got {bad}")


@dataclass(frozen=True)
class DomainRatio:
    """The Task-Ratios and the Domain-Ratio of one variant on one domain."""

    variant: Variant
    domain: str
    task_ratios: Mapping[str, float | None]
    domain_ratio: float | None  # None when a dense score is 0 (the Task-Ratio is undefined)


# --------------------------------------------------------------------------------------------- computation


def rate_label(rate: float) -> str:
    """0.9 -> ``"90%"``."""
    return f"{round(rate * 100, 6):g}%"


def variant_ratios(results: EvalResults, entry: VariantScores) -> list[DomainRatio]:
    """Eq. 7-8 for one variant, one :class:`DomainRatio` per domain it covers."""
    out = []
    for domain in entry.variant.domains:
        ratios: dict[str, float | None] = {}
        for task, dense_score in results.dense[domain].items():
            ratios[task] = None if dense_score == 0 else task_ratio(entry.scores[task], dense_score)
        known = [r for r in ratios.values() if r is not None]
        overall = domain_ratio(known) if len(known) == len(ratios) else None
        out.append(DomainRatio(entry.variant, domain, ratios, overall))
    return out


def percent(ratio: float | None) -> str:
    return UNDEFINED if ratio is None else format_percent(ratio)


def all_ratios(results: EvalResults) -> list[DomainRatio]:
    """:func:`variant_ratios` of every variant, in input order."""
    return [ratio for entry in results.variants for ratio in variant_ratios(results, entry)]


def methods_of(variants: Sequence[Variant]) -> list[str]:
    """Method names in order of first appearance."""
    return list(dict.fromkeys(v.method for v in variants))


def merge_sets(results: EvalResults) -> list[tuple[str, ...]]:
    """The distinct sets of merged domains, in order of first appearance."""
    return list(dict.fromkeys(e.variant.domains for e in results.variants if e.variant.kind == "merge"))


def method_rate_rows(variants: Sequence[Variant]) -> list[tuple[float, str]]:
    """(rate, method) pairs sorted by rate, then by method order of first appearance."""
    methods = methods_of(variants)
    pairs = {(v.rate, v.method) for v in variants}
    return sorted(pairs, key=lambda pair: (pair[0], methods.index(pair[1])))
