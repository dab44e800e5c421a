"""``evaluate(EvalSpec)``: the base, dense fine-tunes and adapter variants through lm-eval, then the report."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .spec import EvalSpec
from .report import EvalResults


def evaluate(spec: EvalSpec, *, progress: bool = True) -> tuple[EvalResults, Path, Path | None]:
    """Evaluate everything ``spec`` names and write report.md, report.json and the plots to ``spec.out``.

    Returns the results, the report folder and, with ``keep_merged``, the folder of the kept merged models.
    """
    from transformers.utils import logging as transformers_logging

    from .backends import require_vllm
    from .options import build_evaluator
    from .report import write_report
    from .runner import MergeVariant, evaluate_all
    from ..lmeval.tasks import resolve_tasks

    options = spec.lm_eval
    if options.backend == "vllm":
        require_vllm()
    manager = resolve_tasks([t for d in spec.domains for t in d.tasks], extra_paths=spec.include_path)
    transformers_logging.disable_progress_bar()  # one load per variant: lm-eval's bars show the progress
    merges = [MergeVariant(dict(merge), mode=spec.merge_mode) for merge in spec.merges]
    out = Path(spec.out).resolve()
    kept = out.parent / f"{out.name}-merged" if options.keep_merged else None
    with tempfile.TemporaryDirectory(prefix=".dppa-merged-", dir=out.parent) as scratch:
        evaluator = build_evaluator(options, spec.base.ref, manager, work_dir=kept or Path(scratch))
        results = evaluate_all(
            spec.base.ref, spec.domains, evaluator, prunes=spec.adapters, merges=merges, progress=progress
        )
    return results, write_report(results, out), kept
