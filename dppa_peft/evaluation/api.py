"""``evaluate(EvalSpec)``: the base, dense fine-tunes and adapter variants through lm-eval, then the report."""

from __future__ import annotations

from pathlib import Path

from ..specs import EvalSpec
from .report import EvalResults


def evaluate(spec: EvalSpec, *, progress: bool = True) -> tuple[EvalResults, Path]:
    """Evaluate everything ``spec`` names and write report.md, report.json and the plots to ``spec.out``."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from .report import write_report
    from .runner import Evaluator, MergeVariant, evaluate_all
    from .tasks import task_manager

    transformers_logging.disable_progress_bar()  # one load per variant: the evaluation bar shows the progress
    tokenizer = AutoTokenizer.from_pretrained(spec.base.ref, revision=spec.base.revision)
    evaluator = Evaluator(tokenizer, task_manager(extra_paths=spec.include_path), metric=spec.metric,
                          batch_size=spec.batch_size, limit=spec.lm_eval_limit)
    merges = [MergeVariant(dict(merge), mode=spec.merge_mode) for merge in spec.merges]
    results = evaluate_all(spec.base.ref, spec.domains, evaluator, prunes=spec.adapters, merges=merges,
                           progress=progress)
    return results, write_report(results, spec.out)
