"""lm-eval on a loaded model: the scores of lm-eval tasks (one metric each), with one task manager and tokenizer."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: One task's score and its standard error (None when lm-eval reports none).
Score = tuple[float, float | None]


@dataclass
class TaskScorer:
    """Runs lm-eval tasks with one task manager and tokenizer on in-memory models (``scores``, quiet): the DPA
    ``tasks`` objective's scorer; ``evaluation`` extends it with its backends."""

    tokenizer: Any
    task_manager: Any
    metric: str = "acc"
    batch_size: int = 16
    limit: int | float | None = None
    num_fewshot: int | None = None
    device: str = "cpu"
    bootstrap_iters: int = 1000

    def scores(self, model: torch.nn.Module, tasks: Sequence[str]) -> dict[str, float]:
        """task -> score of ``metric`` (its first filter, e.g. 'acc,none') of an in-memory model, quietly."""
        from lm_eval.models.huggingface import HFLM

        with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's progress bars and notices; errors still raise
            lm = HFLM(pretrained=model.eval(), tokenizer=self.tokenizer, batch_size=self.batch_size)
            output = self.run(lm, None, tasks, bootstrap_iters=0, verbosity="ERROR")
        return {task: value for task, (value, _) in self.extract(output, tasks).items()}

    def run(
        self, model: Any, model_args: dict[str, Any] | None, tasks: Sequence[str], bootstrap_iters: int, verbosity: str
    ) -> dict[str, Any]:
        from lm_eval import simple_evaluate

        return simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=list(tasks),
            task_manager=self.task_manager,
            num_fewshot=self.num_fewshot,
            batch_size=self.batch_size,
            device=self.run_device(),
            limit=self.limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            verbosity=verbosity,
        )

    def extract(self, output: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, Score]:
        """task -> (value, stderr) of ``metric`` (its first filter); stderr None when lm-eval reports 'N/A'."""
        scores = {}
        for task in tasks:
            metrics = output["results"].get(task, {})
            key = next((k for k in metrics if k.split(",")[0] == self.metric), None)
            if key is None:
                raise ValueError(
                    f"lm-eval task {task!r} reports no {self.metric!r} metric (it reports "
                    f"{sorted(k for k in metrics if ',' in k and '_stderr' not in k)}); choose another "
                    "metric"
                )
            name, _, filter_name = key.partition(",")
            stderr = metrics.get(f"{name}_stderr,{filter_name}")
            known = isinstance(stderr, (int, float)) and math.isfinite(stderr)
            scores[task] = (float(metrics[key]), float(stderr) if known else None)
        return scores

    def run_device(self) -> str | None:
        """The device lm-eval is told (an in-memory model is where it is)."""
        return self.device
