"""Evaluation reports shaped like the DPPA paper's tables, with plots.

Input: :class:`EvalResults` (per-task scores of the dense fine-tunes, of the base model and of each pruned or
merged variant). Output: a folder with ``report.md``, ``report.json`` and PNG plots, written atomically.

Tables: (a) Domain-Ratio % by domain x pruning rate x method (paper Table 1); (b) one Domain-Ratio % table per
set of merged domains, rows method & rate (Tables 5/6); (c) raw per-task scores (Tables 7/9, and the merges);
(d) base vs dense per task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dppa_peft.checkpoint import atomic_directory
from dppa_peft.evaluation.ratios import domain_ratio, format_percent, task_ratio

Kind = Literal["prune", "merge"]
MISSING = "-"
UNDEFINED = "n/a"
PRUNE_PLOT = "domain_ratio_vs_rate.png"


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
            _check_scores(f"dense scores of {domain!r}", scores)
            _check_scores(f"base scores of {domain!r}", self.base[domain])

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
        _check_scores(f"scores of {variant.label} ({variant.kind})", entry.scores)


def _check_scores(where: str, scores: Mapping[str, float]) -> None:
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


@dataclass(frozen=True)
class Table:
    """A rendered table: a title, a header row and rows of cell strings."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


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
        defined = None not in ratios.values()
        out.append(DomainRatio(entry.variant, domain, ratios, domain_ratio(ratios.values()) if defined else None))
    return out


def _percent(ratio: float | None) -> str:
    return UNDEFINED if ratio is None else format_percent(ratio)


def all_ratios(results: EvalResults) -> list[DomainRatio]:
    """:func:`variant_ratios` of every variant, in input order."""
    return [ratio for entry in results.variants for ratio in variant_ratios(results, entry)]


def _methods(variants: Sequence[Variant]) -> list[str]:
    """Method names in order of first appearance."""
    return list(dict.fromkeys(v.method for v in variants))


def _merge_sets(results: EvalResults) -> list[tuple[str, ...]]:
    """The distinct sets of merged domains, in order of first appearance."""
    return list(dict.fromkeys(e.variant.domains for e in results.variants if e.variant.kind == "merge"))


def _method_rate_rows(variants: Sequence[Variant]) -> list[tuple[float, str]]:
    """(rate, method) pairs sorted by rate, then by method order of first appearance."""
    methods = _methods(variants)
    pairs = {(v.rate, v.method) for v in variants}
    return sorted(pairs, key=lambda pair: (pair[0], methods.index(pair[1])))


# ------------------------------------------------------------------------------------------------- tables


def _score(value: float, stderr: float | None = None) -> str:
    """A raw score with four decimals, and ``± stderr`` when known."""
    return f"{value:.4f}" if stderr is None else f"{value:.4f} ± {stderr:.4f}"


def dense_base_table(results: EvalResults) -> Table:
    """(d) Base and dense fine-tune score per task, and the fine-tune's gain."""
    rows = tuple(
        (domain, task, _score(base, results.base_stderr.get(domain, {}).get(task)),
         _score(dense, results.dense_stderr.get(domain, {}).get(task)), f"{dense - base:+.4f}")
        for domain, tasks in results.dense.items()
        for task, dense in tasks.items()
        for base in [results.base[domain][task]]
    )
    return Table(
        f"Base vs dense fine-tune ({results.metric})", ("Domain", "Task", "Base", "Dense", "Dense - Base"), rows
    )


def prune_table(results: EvalResults, ratios: Sequence[DomainRatio]) -> Table:
    """(a) Paper Table 1: rows domain x pruning rate, columns methods, cells Domain-Ratio %."""
    pruned = [r for r in ratios if r.variant.kind == "prune"]
    methods = _methods([r.variant for r in pruned])
    cell = {(r.domain, r.variant.rate, r.variant.method): _percent(r.domain_ratio) for r in pruned}
    rows = tuple(
        (domain, rate_label(rate), *(cell.get((domain, rate, m), MISSING) for m in methods))
        for domain in results.dense
        for rate in sorted({r.variant.rate for r in pruned if r.domain == domain})
    )
    return Table("Pruning: Domain-Ratio (%)", ("Domain", "Pruning rate", *methods), rows)


def merge_table(domains: tuple[str, ...], ratios: Sequence[DomainRatio]) -> Table:
    """(b) Paper Tables 5/6 for one set of merged domains: rows method & rate, columns domains."""
    merged = [r for r in ratios if r.variant.kind == "merge" and r.variant.domains == domains]
    cell = {(r.variant.rate, r.variant.method, r.domain): _percent(r.domain_ratio) for r in merged}
    rows = tuple(
        (f"{method} {rate_label(rate)}", *(cell[(rate, method, d)] for d in domains))
        for rate, method in _method_rate_rows([r.variant for r in merged])
    )
    return Table(f"Merging {' + '.join(domains)}: Domain-Ratio (%)", ("Method & pruning rate", *domains), rows)


def prune_scores_table(results: EvalResults) -> Table:
    """(c) Paper Tables 7/9: rows task x pruning rate, columns methods, cells raw scores."""
    pruned = [e for e in results.variants if e.variant.kind == "prune"]
    methods = _methods([e.variant for e in pruned])
    cell = {(task, e.variant.rate, e.variant.method): _score(s, e.stderr.get(task)) for e in pruned
            for task, s in e.scores.items()}
    rows = tuple(
        (task, rate_label(rate), *(cell.get((task, rate, m), MISSING) for m in methods))
        for domain, tasks in results.dense.items()
        for task in tasks
        for rate in sorted({e.variant.rate for e in pruned if e.variant.domains == (domain,)})
    )
    return Table(f"Pruning: per-task scores ({results.metric})", ("Task", "Pruning rate", *methods), rows)


def merge_scores_table(results: EvalResults, domains: tuple[str, ...]) -> Table:
    """(c) Raw per-task scores of the merges of ``domains``: rows method & rate, columns tasks."""
    merged = {(e.variant.rate, e.variant.method): e for e in results.variants if e.variant.kind == "merge"
              and e.variant.domains == domains}  # fmt: skip
    tasks = [task for domain in domains for task in results.dense[domain]]
    rows = tuple(
        (f"{method} {rate_label(rate)}",
         *(_score(merged[(rate, method)].scores[t], merged[(rate, method)].stderr.get(t)) for t in tasks))
        for rate, method in _method_rate_rows([e.variant for e in merged.values()])
    )
    return Table(f"Merging {' + '.join(domains)}: per-task scores ({results.metric})",
                 ("Method & pruning rate", *tasks), rows)  # fmt: skip


def report_tables(results: EvalResults) -> list[Table]:
    """Every table of the report, in display order: (d), (a), (b), (c)."""
    ratios = all_ratios(results)
    merge_sets = _merge_sets(results)
    has_prune = any(e.variant.kind == "prune" for e in results.variants)
    return [
        dense_base_table(results),
        *([prune_table(results, ratios)] if has_prune else []),
        *(merge_table(domains, ratios) for domains in merge_sets),
        *([prune_scores_table(results)] if has_prune else []),
        *(merge_scores_table(results, domains) for domains in merge_sets),
    ]


# ------------------------------------------------------------------------------------------------- render


def render_table(table: Table) -> str:
    """A Markdown table under a ``##`` heading."""
    lines = [f"## {table.title}", "", "| " + " | ".join(table.header) + " |"]
    lines.append("|" + "|".join("---" for _ in table.header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_markdown(results: EvalResults, plots: Sequence[str]) -> str:
    """The whole ``report.md``."""
    intro = (
        "# DPPA evaluation report\n\n"
        f"Scores are lm-eval `{results.metric}`. Task-Ratio = variant score / dense fine-tune score (paper eq. 7); "
        "Domain-Ratio = geometric mean of a domain's Task-Ratios (eq. 8), shown in %; 100 = as good as the dense "
        f"fine-tune. `{MISSING}` = not evaluated; `{UNDEFINED}` = undefined, the dense fine-tune scored 0 on a task. "
        "Raw scores show lm-eval's standard error as `± stderr` where it reports one."
    )
    figures = "\n".join(f"![{name}]({name})" for name in plots)
    parts = [intro, *(render_table(t) for t in report_tables(results))]
    return "\n\n".join(parts + ([f"## Plots\n\n{figures}"] if plots else [])) + "\n"


def report_data(results: EvalResults) -> dict[str, Any]:
    """The ``report.json`` content: inputs plus every Task-/Domain-Ratio (as fractions)."""

    def variant_dict(v: Variant) -> dict[str, Any]:
        return {"method": v.method, "rate": v.rate, "kind": v.kind, "domains": list(v.domains)}

    return {
        "metric": results.metric,
        "domains": {domain: list(tasks) for domain, tasks in results.dense.items()},
        "dense": {d: dict(t) for d, t in results.dense.items()},
        "base": {d: dict(t) for d, t in results.base.items()},
        "dense_stderr": {d: dict(t) for d, t in results.dense_stderr.items()},
        "base_stderr": {d: dict(t) for d, t in results.base_stderr.items()},
        "variants": [{**variant_dict(e.variant), "scores": dict(e.scores), "stderr": dict(e.stderr)}
                     for e in results.variants],
        "ratios": [
            {**variant_dict(r.variant), "domain": r.domain, "task_ratios": dict(r.task_ratios),
             "domain_ratio": r.domain_ratio}
            for r in all_ratios(results)
        ],  # fmt: skip
    }


# -------------------------------------------------------------------------------------------------- plots


def _save(figure: Figure, path: Path) -> None:
    """Render ``figure`` with the Agg canvas (no pyplot, no global backend change) to ``path``."""
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100, metadata={"Software": None})


def plot_prune(results: EvalResults, ratios: Sequence[DomainRatio], path: Path) -> None:
    """Domain-Ratio % vs pruning rate: one subplot per domain, one line per method."""
    pruned = [r for r in ratios if r.variant.kind == "prune"]
    domains = [d for d in results.dense if any(r.domain == d for r in pruned)]
    figure = Figure(figsize=(4.5 * len(domains), 3.6), layout="constrained")
    for ax, domain in zip(figure.subplots(1, len(domains), squeeze=False)[0], domains, strict=True):
        for index, method in enumerate(_methods([r.variant for r in pruned])):  # one colour per method
            mine = [r for r in pruned if r.domain == domain and r.variant.method == method]
            points = sorted((r.variant.rate, r.domain_ratio) for r in mine if r.domain_ratio is not None)
            if points:
                xs, ys = [100 * x for x, _ in points], [100 * y for _, y in points]
                ax.plot(xs, ys, marker="o", color=f"C{index % 10}", label=method)
        ax.axhline(100, color="grey", linestyle="--", linewidth=0.8)
        ax.set(title=domain, xlabel="pruning rate (%)", ylabel="Domain-Ratio (%)")
        ax.legend(fontsize="small")
    _save(figure, path)


def plot_merge(domains: tuple[str, ...], ratios: Sequence[DomainRatio], path: Path) -> None:
    """Grouped bars: one group per domain, one bar per (method, rate) merge."""
    merged = [r for r in ratios if r.variant.kind == "merge" and r.variant.domains == domains]
    rows = _method_rate_rows([r.variant for r in merged])
    value = {(r.variant.rate, r.variant.method, r.domain): 100 * r.domain_ratio if r.domain_ratio is not None else 0.0
             for r in merged}
    width = 0.8 / len(rows)
    figure = Figure(figsize=(max(4.0, 1.6 * len(domains) + 0.4 * len(rows)), 3.6), layout="constrained")
    ax = figure.subplots()
    for i, (rate, method) in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(domains))]
        ax.bar(xs, [value[(rate, method, d)] for d in domains], width, label=f"{method} {rate_label(rate)}")
    ax.axhline(100, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(domains)), list(domains))
    ax.set(title=f"Merging {' + '.join(domains)}", ylabel="Domain-Ratio (%)")
    ax.legend(fontsize="small")
    _save(figure, path)


def merge_plot_name(domains: tuple[str, ...]) -> str:
    """File name of the merge plot for ``domains``, e.g. ``merge_math-finance.png``."""
    return "merge_" + "-".join("".join(c if c.isalnum() or c in "_." else "_" for c in d) for d in domains) + ".png"


def _write_plots(results: EvalResults, folder: Path) -> list[str]:
    """Write every plot into ``folder``; return their file names."""
    ratios = all_ratios(results)
    names = []
    if any(r.variant.kind == "prune" for r in ratios):
        plot_prune(results, ratios, folder / PRUNE_PLOT)
        names.append(PRUNE_PLOT)
    for domains in _merge_sets(results):
        plot_merge(domains, ratios, folder / merge_plot_name(domains))
        names.append(merge_plot_name(domains))
    return names


# -------------------------------------------------------------------------------------------------- write


def write_report(results: EvalResults, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.json`` and the plots into ``out_dir`` atomically; return its path.

    Everything is written into a temporary folder next to ``out_dir`` first, then renamed into place, so readers
    never see a half-written report; an existing report folder is replaced.
    """
    target = Path(out_dir).resolve()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"report path {target} exists and is not a folder; choose another out_dir")
    with atomic_directory(target, overwrite=True) as staging:
        staging.chmod(0o755)
        plots = _write_plots(results, staging)
        (staging / "report.md").write_text(render_markdown(results, plots), encoding="utf-8")
        data = json.dumps(report_data(results), indent=2, allow_nan=False)
        (staging / "report.json").write_text(data + "\n", encoding="utf-8")
    return target
