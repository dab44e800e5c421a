"""The lm-eval options of ``dppa-peft eval`` (``evaluation.spec.EvalOptions``) turned into an :class:`Evaluator`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .spec import EvalOptions
from .backends import BackendSettings, parse_model_args
from .runner import Evaluator


def build_evaluator(options: EvalOptions, tokenizer: Any, task_manager: Any, work_dir: Path | None = None) -> Evaluator:
    """The :class:`Evaluator` the options describe (``work_dir``: where the vllm backend writes merges)."""
    backend = BackendSettings(
        options.backend,
        dtype=options.dtype,
        device_map=options.device_map,
        work_dir=work_dir,
        keep_merged=options.keep_merged,
        model_args=parse_model_args(options.model_args),
    )
    return Evaluator(
        tokenizer,
        task_manager,
        metric=options.metric,
        batch_size=options.batch_size,
        limit=options.lm_eval_limit,
        num_fewshot=options.num_fewshot,
        device=options.device,
        bootstrap_iters=options.bootstrap_iters,
        backend=backend,
    )


__all__ = ["EvalOptions", "build_evaluator"]
