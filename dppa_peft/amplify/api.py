"""DPA from Python: ``amplify`` an existing adapter, or ``prune_and_amplify`` in one call (DPPA = DP then DPA).

Both write a new adapter folder whose config records the partitions, the factors and the whole search; the
search loads the base model once and applies candidate factors in place (``candidate.AmplifiedModel``).
``search="learned"`` instead learns factor tables per output row (``learned``) by distillation from the dense
fine-tune, on any mask; they are stored with the tensors (format version 2) and recorded in
``amplification.learned``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..format.io import AdapterWriter, SparseDeltaAdapter
from ..checkpoint import atomic_directory
from ..validate import check_finite_params
from ..pipeline import PruneSummary, open_adapter, prune
from ..scope import DEFAULT_SCOPE_PATTERN
from ..errors import UserError
from .calibration import Prompt, check_lengths
from .candidate import AmplifiedModel, load_base_model
from .factors import PARTITION_COMBINE_MODES, amplification_block
from .learned import LearnParams, LearnResult, learn_factors, model_context, teacher_from_pretrained
from .objectives import (Objective, ObjectiveParams, build_objective, calibration_prompts, describe_objective,
                         load_tokenizer)
from .partitions import Partitions, adapter_partitions, default_partition_rates
from .search import DEFAULT_TOL, DPA_METHODS, STRATEGIES, SearchResult, default_bounds, search_factors

LEARNED = "learned"
SEARCHES = STRATEGIES + (LEARNED,)


@dataclass(frozen=True)
class AmplifyParams:
    """DPA settings (each field is a CLI option)."""

    partition_rates: list[float] | None = field(default=None, metadata={
        "help": "partition boundaries as pruning rates, most important first, ending at the target rate "
                "(default: 0.9 0.8 ... down to the rate; rate 0.9 gives one partition)"})
    combine: str = field(default="independent", metadata={
        "help": f"how partition factors combine, one of {PARTITION_COMBINE_MODES}: 'independent' scales each partition by "
                "its own factor; 'max' is the released code (a partition gets the max of its factor and every "
                "later one's)"})
    amplify_unpruned: bool = field(default=False, metadata={
        "help": "also scale the tensors kept outside the pruning scope (embeddings, norms, lm_head) by the largest "
                "factor, as the released code does"})
    factors: list[float] | None = field(default=None, metadata={
        "help": "use these factors (one per partition) and skip the search; no objective is needed"})
    search: str = field(default="default", metadata={
        "help": f"search strategy, one of {SEARCHES}: 'default' = golden-section per partition within --bounds "
                "to --tol; 'reference' = the released +0.1 greedy loop with its quirks; 'learned' = factors per "
                "output row (--learn-granularity) learned by KL distillation from --finetuned on --calibration "
                "prompts (any pruning method; one partition unless --partition-rates)", "choices": SEARCHES})
    dpa_method: int = field(default=1, metadata={
        "help": "DPA method: 1 = progressive (later partitions absent while a factor is searched), 2 = later "
                "partitions present at factor 1"})
    bounds: list[float] | None = field(default=None, metadata={
        "help": "default search: LO HI interval of every factor (default 0.5 3.0; 0.0 1.2 for methods that "
                "already rescale kept values, like DARE, where DPA reduces)"})
    tol: float = field(default=DEFAULT_TOL, metadata={
        "help": "default search: each factor ends within this distance of its optimum for a unimodal objective "
                "(sets the calls per partition: 10 on [0.5, 3.0] at 0.05)"})
    max_calls: int | None = field(default=None, metadata={
        "help": "most objective calls in total (default search: what --tol needs; reference loop: 100)"})
    reference_init: list[float] | None = field(default=None, metadata={
        "help": "reference search: start factors (default 1.8 then 0 for method 1, 1.8 then 1 for method 2)"})
    device: str = field(default="cpu", metadata={"help": "device of the models during the search, e.g. cuda"})
    model_dtype: str = field(default="auto", metadata={
        "help": "dtype the base and fine-tuned models are loaded in for the search (auto, float32, bfloat16)"})

    def __post_init__(self) -> None:
        check_finite_params(self, "DPA")
        if self.combine not in PARTITION_COMBINE_MODES:
            raise ValueError(f"unknown combine mode {self.combine!r}; choose one of {PARTITION_COMBINE_MODES}")
        if self.search not in SEARCHES:
            raise ValueError(f"unknown search strategy {self.search!r}; choose one of {SEARCHES}")
        if self.search == LEARNED and (self.factors is not None or self.bounds is not None
                                       or self.reference_init is not None or self.max_calls is not None):
            raise UserError("search='learned' learns its factors: factors, bounds, reference_init and max_calls "
                            "apply to the default and reference searches only")
        if self.dpa_method not in DPA_METHODS:
            raise ValueError(f"dpa_method must be one of {DPA_METHODS}, got {self.dpa_method!r}")
        if self.bounds is not None and (len(self.bounds) != 2 or not 0 <= self.bounds[0] < self.bounds[1]):
            raise ValueError(f"bounds must be two numbers 0 <= LO < HI, got {self.bounds}")
        if self.search == "reference" and self.bounds is not None:
            raise ValueError("bounds apply to the default search; the reference loop has none (see reference_init)")
        if self.search == "default" and self.reference_init is not None:
            raise ValueError("reference_init applies to search='reference'; the default search uses bounds")


@dataclass(frozen=True)
class DPAOptions:
    """Every DPA setting of one run: search, objective, learned amplification, and a Python objective if given."""

    dpa: AmplifyParams
    objective: ObjectiveParams
    learn: LearnParams
    callable_objective: Objective | None = None


def split_options(options: dict[str, Any]) -> tuple[DPAOptions, dict[str, Any]]:
    """The DPA settings and the options left for the method."""
    options = dict(options)
    callable_objective = options.pop("objective") if callable(options.get("objective")) else None
    chosen = []
    for cls in _DPA_CLASSES:
        names = {f.name for f in dataclasses.fields(cls)}
        chosen.append(cls(**{k: options.pop(k) for k in list(options) if k in names}))
    parsed = DPAOptions(chosen[0], chosen[1], chosen[2], callable_objective)
    if parsed.dpa.search != LEARNED and parsed.learn != LearnParams():
        raise UserError("the learn_* options (--learn-*) apply to search='learned' (--search learned)")
    return parsed, options


def _rescaled(adapter: SparseDeltaAdapter) -> bool:
    """Whether the pruning method already rescaled the kept values (DARE), so DPA searches a reduction."""
    return bool(adapter.config.method.get("params", {}).get("rescale", False))


def _search(adapter: SparseDeltaAdapter, partitions: Partitions, options: DPAOptions, finetuned: Any, base: Any,
            revision: str | None, base_revision: str | None, token: str | bool | None,
            progress: bool) -> tuple[SearchResult, dict[str, Any]]:
    """Search the factors with candidates built in place; returns the search and the objective's description."""
    dpa, objective_params = options.dpa, options.objective
    objective = options.callable_objective or build_objective(objective_params, finetuned, base, dpa.model_dtype, dpa.device,
                                             revision=revision, token=token)
    model = load_base_model(base, adapter, dpa.model_dtype, dpa.device, revision=base_revision, token=token)
    candidate = AmplifiedModel(model, adapter, partitions, dpa.combine, dpa.amplify_unpruned)
    result = search_factors(
        lambda factors: objective(candidate.apply(factors)), partitions.count, dpa.search, dpa.dpa_method,
        bounds=dpa.bounds or default_bounds(_rescaled(adapter)), tol=dpa.tol, max_calls=dpa.max_calls,
        reference_init=dpa.reference_init, progress=progress,
    )
    return result, describe_objective(objective)


def write_amplified(adapter: SparseDeltaAdapter, folder: Path, partitions: Partitions, amplification: dict[str, Any],
                    provenance: dict[str, Any], row_factors: dict[str, torch.Tensor] | None = None) -> None:
    """The adapter's stored tensors with the partition ids, the amplification block and (format version 2) the
    ``[P, R]`` factor tables of ``row_factors`` (tensors not in it store none; None keeps the tables the adapter
    already stores, which the searched partition factors then multiply), into ``folder``."""
    writer = AdapterWriter(folder)
    for name, record in adapter.config.tensors.items():
        stored = adapter.encoded(name)
        ids = partitions.ids.get(name)
        tables = _kept_table(name, stored.factors, 1 if ids is None else partitions.count) if row_factors is None \
            else row_factors.get(name)
        encoded = dataclasses.replace(stored, partition=ids, factors=tables)
        extra = {k: v for k, v in record.items() if k != "partition_densities"}
        if name in partitions.densities:
            extra["partition_densities"] = partitions.densities[name]
        writer.add(name, encoded, **extra)
    summary = dict(adapter.config.summary)
    stored = sum(r["stored_bytes"] for r in writer.records.values() if r.get("pruned"))
    if summary.get("dense_delta_bytes"):
        summary.update(adapter_bytes=stored, size_ratio=stored / summary["dense_delta_bytes"])
    config = dataclasses.replace(adapter.config, tensors=writer.records, amplification=amplification,
                                 summary=summary, provenance={**adapter.config.provenance, **provenance})
    writer.close(config)


def _parse(options: dict[str, Any]) -> DPAOptions:
    parsed, rest = split_options(options)
    if rest:
        raise ValueError(f"no DPA option named {sorted(rest)}; the options are the fields of AmplifyParams, "
                         "ObjectiveParams and LearnParams (see `dppa-peft amplify --help`)")
    return parsed


def _calibration(options: DPAOptions, finetuned: Any, base: Any, revision: str | None,
                 token: str | bool | None) -> tuple[list[Prompt], Any] | None:
    """Learned amplification's prompts and tokenizer, checked (file, fields, lengths) before any model is loaded."""
    if options.dpa.search != LEARNED:
        return None
    if finetuned is None:
        raise UserError("search='learned' distils from the dense fine-tuned model; pass finetuned= (--finetuned)")
    params = options.objective
    prompts = calibration_prompts(params)
    tokenizer = load_tokenizer([params.tokenizer] if params.tokenizer else [finetuned, base], token=token)
    check_lengths(prompts, tokenizer, model_context(finetuned, revision, token), params.continuation_tokens)
    return prompts, tokenizer


def _learn(adapter: SparseDeltaAdapter, partitions: Partitions, options: DPAOptions,
           calibration: tuple[list[Prompt], Any], finetuned: Any, base: Any, revision: str | None,
           base_revision: str | None, token: str | bool | None, progress: bool) -> LearnResult:
    """Learned amplification: the teacher's outputs cached and the teacher freed, then the factors learned on the
    base model (one model on the device at a time)."""
    dpa, params = options.dpa, options.objective
    prompts, tokenizer = calibration
    teacher = teacher_from_pretrained(finetuned, tokenizer, prompts, continuation_tokens=params.continuation_tokens,
                                      batch_size=params.batch_size, params=options.learn, dtype=dpa.model_dtype,
                                      device=dpa.device, revision=revision, token=token)
    model = load_base_model(base, adapter, dpa.model_dtype, dpa.device, revision=base_revision, token=token)
    return learn_factors(model, [adapter], [teacher], options.learn, partitions=[partitions], progress=progress)


def _amplify_into(folder: Path, adapter: SparseDeltaAdapter, parsed: DPAOptions,
                  calibration: tuple[list[Prompt], Any] | None, finetuned: Any, base: Any, revision: str | None,
                  base_revision: str | None, token: str | bool | None, progress: bool,
                  provenance: dict[str, Any]) -> SearchResult | LearnResult | None:
    dpa = parsed.dpa
    rate = float(adapter.config.method["rate"])
    rates = dpa.partition_rates or ([rate] if dpa.search == LEARNED else None)
    partitions = adapter_partitions(adapter, rates)
    base = base or adapter.config.base_model_name_or_path
    result: SearchResult | LearnResult | None = None
    row_factors = None
    if calibration is not None:
        result = _learn(adapter, partitions, parsed, calibration, finetuned, base, revision, base_revision, token,
                        progress)
        raw, combine = _kept_scalars(adapter, partitions, dpa.combine)
        block = amplification_block(partitions.rates, raw, combine, dpa.amplify_unpruned, None)
        block["learned"] = result.record()
        row_factors = result.factors[0]
    else:
        raw, search = dpa.factors, None
        if raw is None:
            result, described = _search(adapter, partitions, parsed, finetuned, base, revision, base_revision, token,
                                        progress)
            raw, search = result.factors, result.record(described)
        block = amplification_block(partitions.rates, raw, dpa.combine, dpa.amplify_unpruned, search)
    write_amplified(adapter, folder, partitions, block, {**provenance, "package_version": __version__}, row_factors)
    return result


def _kept_table(name: str, table: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """A stored factor table for ``count`` partitions: as it is, or a one-partition table repeated for each."""
    if table is None or table.shape[0] == count:
        return table
    if table.shape[0] == 1:
        return table.expand(count, -1).contiguous()
    raise UserError(f"{name} stores learned factors for {table.shape[0]} partitions, not {count}; amplify with the "
                    "partition rates it was learned with, or learn again (--search learned)")


def _kept_scalars(adapter: SparseDeltaAdapter, partitions: Partitions, combine: str) -> tuple[list[float], str]:
    """The partition factors learned amplification keeps (it learns on top of them): the adapter's own when its
    partitions are these, else 1 each (the rule ``learned.Student`` applies)."""
    stored = adapter.config.amplification or {}
    if stored.get("partition_rates") == partitions.rates and len(stored.get("raw_factors", [])) == partitions.count:
        return list(stored["raw_factors"]), stored.get("combine", combine)
    return [1.0] * partitions.count, combine


def amplify(adapter: str | os.PathLike | SparseDeltaAdapter, out: str | os.PathLike, *,
            finetuned: str | os.PathLike | None = None, base: str | os.PathLike | None = None,
            revision: str | None = None, base_revision: str | None = None, adapter_revision: str | None = None,
            token: str | bool | None = None, overwrite: bool = False, progress: bool = True,
            command: str | None = None, **options: Any) -> tuple[SparseDeltaAdapter, SearchResult | LearnResult | None]:
    """DPA on an existing adapter: search one factor per partition and write the amplified adapter to ``out``.

    ``options`` are ``AmplifyParams`` and ``ObjectiveParams`` fields; ``objective`` may also be a Python callable
    ``model -> score``. ``base`` defaults to the base recorded in the adapter; ``finetuned`` (the dense fine-tune)
    is needed by the ``kl`` and ``tasks`` objectives and by ``search="learned"``. Returns the new adapter and the
    search (a ``LearnResult`` for ``search="learned"``; None with ``factors=``).
    """
    handle = open_adapter(adapter, revision=adapter_revision, token=token)
    parsed = _parse(options)
    calibration = _calibration(parsed, finetuned, base or handle.config.base_model_name_or_path, revision, token)
    provenance = {"command": command or f"dppa_peft.amplify({handle.ref!r})", "amplified_from": handle.ref}
    inputs = [handle.directory, finetuned, base or handle.config.base_model_name_or_path]
    with atomic_directory(out, overwrite=overwrite, inputs=inputs) as tmp:
        result = _amplify_into(tmp, handle, parsed, calibration, finetuned, base, revision, base_revision, token,
                               progress, provenance)
    return SparseDeltaAdapter(out), result


def prune_and_amplify(base: str | os.PathLike, finetuned: str | os.PathLike, out: str | os.PathLike,
                      method: str = "dp", rate: float = 0.9, *, revision: str | None = None,
                      base_revision: str | None = None, token: str | bool | None = None, overwrite: bool = False,
                      progress: bool = True, command: str | None = None,
                      scope_pattern: str = DEFAULT_SCOPE_PATTERN,
                      outside_scope: str = "dense", value_dtype: str = "auto",
                      **options: Any) -> tuple[SparseDeltaAdapter, PruneSummary, SearchResult | LearnResult | None]:
    """Prune with ``method`` storing DPA partitions, then search the factors: DPPA when ``method='dp'``.

    ``options`` mixes the method's parameters with ``AmplifyParams`` / ``ObjectiveParams`` / ``LearnParams``
    fields. With ``search="learned"`` any method works (one partition unless ``partition_rates`` are given).
    """
    dpa_options = {k: options.pop(k) for k in list(options) if k in _DPA_FIELDS}
    learned = dpa_options.get("search") == LEARNED
    rates: Sequence[float] = dpa_options.get("partition_rates") or ([rate] if learned else
                                                                    default_partition_rates(rate))
    dpa_options["partition_rates"] = list(rates)
    parsed = _parse(dpa_options)
    calibration = _calibration(parsed, finetuned, base, revision, token)
    provenance = {"command": command or f"dppa_peft.prune_and_amplify(method={method!r}, rate={rate})"}
    with atomic_directory(out, overwrite=overwrite, inputs=[base, finetuned]) as tmp:
        pruned, summary = prune(base, finetuned, tmp / "pruned", method, rate, scope_pattern=scope_pattern,
                                outside_scope=outside_scope, value_dtype=value_dtype, revision=revision,
                                base_revision=base_revision, token=token, progress=progress,
                                command=provenance["command"], partition_rates=rates, **options)
        result = _amplify_into(tmp, pruned, parsed, calibration, finetuned, base, revision, base_revision, token,
                               progress, provenance)
        shutil.rmtree(tmp / "pruned")
    return SparseDeltaAdapter(out), summary, result


_DPA_CLASSES = (AmplifyParams, ObjectiveParams, LearnParams)
_DPA_FIELDS = {f.name for cls in _DPA_CLASSES for f in dataclasses.fields(cls)}
