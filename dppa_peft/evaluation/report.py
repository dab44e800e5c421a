"""Evaluation reports shaped like the DPPA paper's tables, with plots: the writer over ``results`` (the model and
its ratios), ``tables`` (the tables and ``report.md``) and ``plots``.

Input: :class:`EvalResults` (per-task scores of the dense fine-tunes, of the base model and of each pruned or
merged variant). Output: a folder with ``report.md``, ``report.json`` and PNG plots, written atomically.

Tables: (a) Domain-Ratio % by domain x pruning rate x method (paper Table 1); (b) one Domain-Ratio % table per
set of merged domains, rows method & rate (Tables 5/6); (c) raw per-task scores (Tables 7/9, and the merges);
(d) base vs dense per task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dppa_peft.io.checkpoint import atomic_directory

from .plots import PRUNE_PLOT, merge_plot_name, plot_merge, plot_prune, write_plots
from .results import (
    DomainRatio,
    EvalResults,
    Kind,
    Variant,
    VariantScores,
    all_ratios,
    rate_label,
    variant_ratios,
)
from .tables import MISSING, Table, render_markdown, render_table, report_tables


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
        "variants": [
            {**variant_dict(e.variant), "scores": dict(e.scores), "stderr": dict(e.stderr)} for e in results.variants
        ],
        "ratios": [
            {
                **variant_dict(r.variant),
                "domain": r.domain,
                "task_ratios": dict(r.task_ratios),
                "domain_ratio": r.domain_ratio,
            }
            for r in all_ratios(results)
        ],  # fmt: skip
    }


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
        plots = write_plots(results, staging)
        (staging / "report.md").write_text(render_markdown(results, plots), encoding="utf-8")
        data = json.dumps(report_data(results), indent=2, allow_nan=False)
        (staging / "report.json").write_text(data + "\n", encoding="utf-8")
    return target


__all__ = [
    "MISSING",
    "PRUNE_PLOT",
    "DomainRatio",
    "EvalResults",
    "Kind",
    "Table",
    "Variant",
    "VariantScores",
    "all_ratios",
    "merge_plot_name",
    "plot_merge",
    "plot_prune",
    "rate_label",
    "render_markdown",
    "render_table",
    "report_data",
    "report_tables",
    "variant_ratios",
    "write_report",
]
