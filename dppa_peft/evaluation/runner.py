"""Evaluate a base, its dense fine-tunes and their pruned or merged variants with lm-eval; collect EvalResults."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.progress import progress_bar

from ..methods.registry import METHODS
from ..publish.adapter import SparseDeltaAdapter, open_adapter
from ..core.spec import Source
from .spec import Domain
from ..lmeval.scoring import Score, TaskScorer
from .backends import BackendSettings, ModelSource, lm_eval_model
from .report import EvalResults, Variant, VariantScores

AdapterRef = str | os.PathLike | SparseDeltaAdapter | Source


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
class Evaluator(TaskScorer):
    """A :class:`~dppa_peft.lmeval.scoring.TaskScorer` that also runs lm-eval on model sources through a backend
    (``measure``: lm-eval's ``dppa`` HF model or vLLM, with lm-eval's progress shown)."""

    backend: BackendSettings = field(default_factory=BackendSettings)

    def measure(self, source: ModelSource, tasks: Sequence[str]) -> dict[str, Score]:
        """task -> (score, stderr or None) of ``source`` through the backend, showing lm-eval's progress."""
        settings = self.backend if self.backend.tokenizer else replace(self.backend, tokenizer=self.tokenizer)
        with lm_eval_model(source, settings) as (model, model_args):
            output = self.run(model, model_args, tasks, bootstrap_iters=self.bootstrap_iters, verbosity="WARNING")
        return self.extract(output, tasks)

    def run_device(self) -> str | None:
        """vLLM places the model itself: no device for it."""
        return self.device if self.backend.backend == "hf" else None


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
