"""The report's tables, shaped like the DPPA paper's (Table 1, 5/6, 7/9, base vs dense), and ``report.md``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .results import (
    UNDEFINED,
    DomainRatio,
    EvalResults,
    all_ratios,
    merge_sets,
    method_rate_rows,
    methods_of,
    percent,
    rate_label,
)

MISSING = "-"  # not evaluated


@dataclass(frozen=True)
class Table:
    """A rendered table: a title, a header row and rows of cell strings."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


# ------------------------------------------------------------------------------------------------- tables


def _score(value: float, stderr: float | None = None) -> str:
    """A raw score with four decimals, and ``± stderr`` when known."""
    return f"{value:.4f}" if stderr is None else f"{value:.4f} ± {stderr:.4f}"


def dense_base_table(results: EvalResults) -> Table:
    """(d) Base and dense fine-tune score per task, and the fine-tune's gain."""
    rows = tuple(
        (
            domain,
            task,
            _score(base, results.base_stderr.get(domain, {}).get(task)),
            _score(dense, results.dense_stderr.get(domain, {}).get(task)),
            f"{dense - base:+.4f}",
        )
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
    methods = methods_of([r.variant for r in pruned])
    cell = {(r.domain, r.variant.rate, r.variant.method): percent(r.domain_ratio) for r in pruned}
    rows = tuple(
        (domain, rate_label(rate), *(cell.get((domain, rate, m), MISSING) for m in methods))
        for domain in results.dense
        for rate in sorted({r.variant.rate for r in pruned if r.domain == domain})
    )
    return Table("Pruning: Domain-Ratio (%)", ("Domain", "Pruning rate", *methods), rows)


def merge_table(domains: tuple[str, ...], ratios: Sequence[DomainRatio]) -> Table:
    """(b) Paper Tables 5/6 for one set of merged domains: rows method & rate, columns domains."""
    merged = [r for r in ratios if r.variant.kind == "merge" and r.variant.domains == domains]
    cell = {(r.variant.rate, r.variant.method, r.domain): percent(r.domain_ratio) for r in merged}
    rows = tuple(
        (f"{method} {rate_label(rate)}", *(cell[(rate, method, d)] for d in domains))
        for rate, method in method_rate_rows([r.variant for r in merged])
    )
    return Table(f"Merging {' + '.join(domains)}: Domain-Ratio (%)", ("Method & pruning rate", *domains), rows)


def prune_scores_table(results: EvalResults) -> Table:
    """(c) Paper Tables 7/9: rows task x pruning rate, columns methods, cells raw scores."""
    pruned = [e for e in results.variants if e.variant.kind == "prune"]
    methods = methods_of([e.variant for e in pruned])
    cell = {
        (task, e.variant.rate, e.variant.method): _score(s, e.stderr.get(task))
        for e in pruned
        for task, s in e.scores.items()
    }
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
        (
            f"{method} {rate_label(rate)}",
            *(_score(merged[(rate, method)].scores[t], merged[(rate, method)].stderr.get(t)) for t in tasks),
        )
        for rate, method in method_rate_rows([e.variant for e in merged.values()])
    )
    return Table(f"Merging {' + '.join(domains)}: per-task scores ({results.metric})",
                 ("Method & pruning rate", *tasks), rows)  # fmt: skip


def report_tables(results: EvalResults) -> list[Table]:
    """Every table of the report, in display order: (d), (a), (b), (c)."""
    ratios = all_ratios(results)
    merged = merge_sets(results)
    has_prune = any(e.variant.kind == "prune" for e in results.variants)
    return [
        dense_base_table(results),
        *([prune_table(results, ratios)] if has_prune else []),
        *(merge_table(domains, ratios) for domains in merged),
        *([prune_scores_table(results)] if has_prune else []),
        *(merge_scores_table(results, domains) for domains in merged),
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
