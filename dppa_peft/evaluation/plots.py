"""The report's plots: Domain-Ratio vs pruning rate, and one grouped bar chart per set of merged domains."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .results import DomainRatio, EvalResults, all_ratios, merge_sets, method_rate_rows, methods_of, rate_label

PRUNE_PLOT = "domain_ratio_vs_rate.png"


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
        for index, method in enumerate(methods_of([r.variant for r in pruned])):  # one colour per method
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
    rows = method_rate_rows([r.variant for r in merged])
    value = {
        (r.variant.rate, r.variant.method, r.domain): 100 * r.domain_ratio if r.domain_ratio is not None else 0.0
        for r in merged
    }
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


def write_plots(results: EvalResults, folder: Path) -> list[str]:
    """Write every plot into ``folder``; return their file names."""
    ratios = all_ratios(results)
    names = []
    if any(r.variant.kind == "prune" for r in ratios):
        plot_prune(results, ratios, folder / PRUNE_PLOT)
        names.append(PRUNE_PLOT)
    for domains in merge_sets(results):
        plot_merge(domains, ratios, folder / merge_plot_name(domains))
        names.append(merge_plot_name(domains))
    return names
