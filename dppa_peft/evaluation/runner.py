"""Evaluate a base, its dense fine-tunes and their pruned or merged variants with lm-eval; collect EvalResults."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checkpoint import load_causal_lm
from ..format.io import SparseDeltaAdapter
from ..merge import load_merged
from ..pipeline import open_adapter
from .report import EvalResults, Variant, VariantScores

AdapterRef = str | os.PathLike | SparseDeltaAdapter


@dataclass(frozen=True)
class DomainSpec:
    """A domain: its dense fine-tune (folder or Hub id) and the lm-eval tasks that measure it."""

    name: str
    finetuned: str
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class MergeSpec:
    """Adapters merged into one model: domain -> adapter, combine mode and optional weights."""

    adapters: Mapping[str, AdapterRef]
    mode: str = "sum"
    weights: Sequence[float] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None  # how reports name the merge (default: the adapters' methods and the mode)


def method_label(adapter: SparseDeltaAdapter) -> str:
    """The method as reports show it: 'dppa' for DP with amplification, 'dare+dpa' for DARE with it, 'dp+learned' for
    learned amplification, else the name."""
    name = adapter.config.method.get("name", "?")
    if adapter.config.amplification and adapter.config.amplification.get("learned"):
        return f"{name}+learned"
    if adapter.config.amplification:
        return "dppa" if name == "dp" else f"{name}+dpa"
    return name


@dataclass
class Evaluator:
    """Runs lm-eval tasks on in-memory models (``HFLM(pretrained=model)``) with one task manager and tokenizer."""

    tokenizer: Any
    task_manager: Any
    metric: str = "acc"
    batch_size: int = 16
    limit: int | float | None = None
    gen_kwargs: Mapping[str, Any] | None = None

    def scores(self, model: torch.nn.Module, tasks: Sequence[str]) -> dict[str, float]:
        """task -> score of ``metric`` (its first filter, e.g. 'acc,none')."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's progress bars and notices; errors still raise
            lm = HFLM(pretrained=model.eval(), tokenizer=self.tokenizer, batch_size=self.batch_size)
            output = simple_evaluate(model=lm, tasks=list(tasks), task_manager=self.task_manager, limit=self.limit,
                                     gen_kwargs=dict(self.gen_kwargs) if self.gen_kwargs else None,
                                     bootstrap_iters=0, log_samples=False, verbosity="ERROR")
        scores = {}
        for task in tasks:
            metrics = output["results"].get(task, {})
            key = next((k for k in metrics if k.split(",")[0] == self.metric), None)
            if key is None:
                raise ValueError(f"lm-eval task {task!r} reports no {self.metric!r} metric (it reports "
                                 f"{sorted(k for k in metrics if ',' in k)}); choose another metric")
            scores[task] = float(metrics[key])
        return scores


def evaluate_all(base: str, domains: Sequence[DomainSpec], evaluator: Evaluator,
                 prunes: Sequence[tuple[str, AdapterRef]] = (), merges: Sequence[MergeSpec] = (),
                 progress: bool = True) -> EvalResults:
    """Scores of the base and dense fine-tunes on every domain's tasks, and of every pruned and merged variant."""
    by_name = {d.name: d for d in domains}
    jobs = 2 + len(domains) + len(prunes) + len(merges)
    bar = tqdm(total=jobs, desc="evaluating", unit="model", disable=not progress)
    base_model = load_causal_lm(base)
    all_tasks = [t for d in domains for t in d.tasks]
    base_all = evaluator.scores(base_model, all_tasks)
    base_scores = {d.name: {t: base_all[t] for t in d.tasks} for d in domains}
    bar.update(2)
    dense = {}
    for domain in domains:
        model = load_causal_lm(domain.finetuned)
        dense[domain.name] = evaluator.scores(model, domain.tasks)
        bar.update()
    variants = []
    for domain_name, ref in prunes:
        adapter = open_adapter(ref)
        model = load_merged(base, [adapter], progress=False)
        variant = Variant(method_label(adapter), float(adapter.config.method["rate"]), "prune", (domain_name,))
        variants.append(VariantScores(variant, evaluator.scores(model, by_name[domain_name].tasks)))
        bar.update()
    for spec in merges:
        adapters = [open_adapter(ref) for ref in spec.adapters.values()]
        model = load_merged(base, adapters, weights=spec.weights, mode=spec.mode, progress=False, **spec.options)
        labels = sorted({method_label(a) for a in adapters})
        label = spec.label or "+".join(labels) + ("" if spec.mode == "sum" else f" ({spec.mode})")
        tasks = [t for name in spec.adapters for t in by_name[name].tasks]
        variant = Variant(label, float(adapters[0].config.method["rate"]), "merge", tuple(spec.adapters))
        variants.append(VariantScores(variant, evaluator.scores(model, tasks)))
        bar.update()
    bar.close()
    return EvalResults(dense=dense, base=base_scores, variants=variants, metric=evaluator.metric)
