"""Evaluate a base, its dense fine-tunes and their pruned or merged variants with lm-eval; collect EvalResults."""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from ..core.progress import progress_bar

from ..format.io import SparseDeltaAdapter
from ..methods.registry import METHODS
from ..prune.pipeline import open_adapter
from ..core.spec import Source
from .spec import Domain
from .backends import BackendSettings, ModelSource, lm_eval_model
from .report import EvalResults, Variant, VariantScores

AdapterRef = str | os.PathLike | SparseDeltaAdapter | Source
#: One task's score and its standard error (None when lm-eval reports none).
Score = tuple[float, float | None]


@dataclass(frozen=True)
class MergeVariant:
    """Adapters merged into one model: domain -> adapter, combine mode and optional weights."""

    adapters: Mapping[str, AdapterRef]
    mode: str = "sum"
    weights: Sequence[float] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None  # how reports name the merge (default: the adapters' methods and the mode)


def method_label(adapter: SparseDeltaAdapter) -> str:
    """The method as reports show it (the method's ``label``: 'dppa' for DP with amplification, 'dare+dpa', ...;
    '<method>+learned' for learned amplification)."""
    name = str(adapter.config.method.get("name", "?"))
    amplification = adapter.config.amplification or {}
    if amplification.get("learned"):
        return f"{name}+learned"
    if name not in METHODS:
        return name
    return METHODS[name].label(bool(amplification))


@dataclass
class Evaluator:
    """Runs lm-eval tasks with one task manager and tokenizer: on in-memory models (``scores``, quiet), or on model
    sources through a backend (``measure``: lm-eval's ``dppa`` HF model or vLLM, with lm-eval's progress shown)."""

    tokenizer: Any
    task_manager: Any
    metric: str = "acc"
    batch_size: int = 16
    limit: int | float | None = None
    num_fewshot: int | None = None
    device: str = "cpu"
    bootstrap_iters: int = 1000
    backend: BackendSettings = field(default_factory=BackendSettings)

    def scores(self, model: torch.nn.Module, tasks: Sequence[str]) -> dict[str, float]:
        """task -> score of ``metric`` (its first filter, e.g. 'acc,none') of an in-memory model, quietly."""
        from lm_eval.models.huggingface import HFLM

        with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's progress bars and notices; errors still raise
            lm = HFLM(pretrained=model.eval(), tokenizer=self.tokenizer, batch_size=self.batch_size)
            output = self._evaluate(lm, None, tasks, bootstrap_iters=0, verbosity="ERROR")
        return {task: value for task, (value, _) in self._extract(output, tasks).items()}

    def measure(self, source: ModelSource, tasks: Sequence[str]) -> dict[str, Score]:
        """task -> (score, stderr or None) of ``source`` through the backend, showing lm-eval's progress."""
        settings = self.backend if self.backend.tokenizer else replace(self.backend, tokenizer=self.tokenizer)
        with lm_eval_model(source, settings) as (model, model_args):
            output = self._evaluate(model, model_args, tasks, bootstrap_iters=self.bootstrap_iters, verbosity="WARNING")
        return self._extract(output, tasks)

    def _evaluate(
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
            device=self.device if self.backend.backend == "hf" else None,  # vLLM places itself
            limit=self.limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            verbosity=verbosity,
        )

    def _extract(self, output: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, Score]:
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


def evaluate_all(
    base: str,
    domains: Sequence[Domain],
    evaluator: Evaluator,
    prunes: Sequence[tuple[str, AdapterRef]] = (),
    merges: Sequence[MergeVariant] = (),
    progress: bool = True,
) -> EvalResults:
    """Scores of the base and dense fine-tunes on every domain's tasks, and of every pruned and merged variant.

    Every model goes through ``evaluator.measure``: the base and the fine-tunes as they are, each variant as the base
    with its adapters merged in (at load with the hf backend; as a merged folder with vLLM).
    """
    by_name = {d.name: d for d in domains}
    bar = progress_bar(
        total=1 + len(domains) + len(prunes) + len(merges), desc="evaluating", unit="model", disable=not progress
    )
    all_tasks = [t for d in domains for t in d.tasks]
    base_all = evaluator.measure(ModelSource(str(base), label="base"), all_tasks)
    bar.update()
    dense = {}
    for domain in domains:
        dense[domain.name] = evaluator.measure(ModelSource(domain.finetuned.ref, label=domain.name), domain.tasks)
        bar.update()
    variants = []
    for domain_name, ref in prunes:
        adapter = open_adapter(ref)
        variant = Variant(method_label(adapter), float(adapter.config.method["rate"]), "prune", (domain_name,))
        source = ModelSource(str(base), (adapter,), label=f"{domain_name} {variant.label}")
        variants.append(_variant_scores(variant, evaluator.measure(source, by_name[domain_name].tasks)))
        bar.update()
    for spec in merges:
        adapters = tuple(open_adapter(ref) for ref in spec.adapters.values())
        labels = sorted({method_label(a) for a in adapters})
        label = spec.label or "+".join(labels) + ("" if spec.mode == "sum" else f" ({spec.mode})")
        tasks = [t for name in spec.adapters for t in by_name[name].tasks]
        variant = Variant(label, float(adapters[0].config.method["rate"]), "merge", tuple(spec.adapters))
        source = ModelSource(
            str(base),
            adapters,
            None if spec.weights is None else tuple(spec.weights),
            spec.mode,
            spec.options,
            label=f"merge {'+'.join(spec.adapters)} {variant.label}",
        )
        variants.append(_variant_scores(variant, evaluator.measure(source, tasks)))
        bar.update()
    bar.close()
    return EvalResults(
        dense=_values(dense),
        base={d.name: {t: base_all[t][0] for t in d.tasks} for d in domains},
        variants=variants,
        metric=evaluator.metric,
        dense_stderr=_errors(dense),
        base_stderr=_errors({d.name: {t: base_all[t] for t in d.tasks} for d in domains}),
    )


def _values(scores: Mapping[str, Mapping[str, Score]]) -> dict[str, dict[str, float]]:
    return {key: {task: value for task, (value, _) in tasks.items()} for key, tasks in scores.items()}


def _errors(scores: Mapping[str, Mapping[str, Score]]) -> dict[str, dict[str, float]]:
    """The known standard errors only (lm-eval reports none for some metrics)."""
    return {key: {task: err for task, (_, err) in tasks.items() if err is not None} for key, tasks in scores.items()}


def _variant_scores(variant: Variant, scores: Mapping[str, Score]) -> VariantScores:
    return VariantScores(
        variant, {t: v for t, (v, _) in scores.items()}, stderr={t: e for t, (_, e) in scores.items() if e is not None}
    )
