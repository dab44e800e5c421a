"""DPA from Python: ``amplify`` an existing adapter, or ``prune_and_amplify`` in one call (DPPA = DP then DPA).

Both write a new adapter folder whose config records the partitions, the factors and the whole search; the
search loads the base model once and applies candidate factors in place (``candidate.AmplifiedModel``).
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
from .candidate import AmplifiedModel, load_base_model
from .factors import PARTITION_COMBINE_MODES, amplification_block
from .objectives import Objective, ObjectiveParams, build_objective, describe_objective
from .partitions import Partitions, adapter_partitions, default_partition_rates
from .search import DEFAULT_TOL, DPA_METHODS, STRATEGIES, SearchResult, default_bounds, search_factors


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
        "help": f"search strategy, one of {STRATEGIES}: 'default' = golden-section per partition within --bounds "
                "to --tol; 'reference' = the released +0.1 greedy loop with its quirks"})
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
        if self.search not in STRATEGIES:
            raise ValueError(f"unknown search strategy {self.search!r}; choose one of {STRATEGIES}")
        if self.dpa_method not in DPA_METHODS:
            raise ValueError(f"dpa_method must be one of {DPA_METHODS}, got {self.dpa_method!r}")
        if self.bounds is not None and (len(self.bounds) != 2 or not 0 <= self.bounds[0] < self.bounds[1]):
            raise ValueError(f"bounds must be two numbers 0 <= LO < HI, got {self.bounds}")
        if self.search == "reference" and self.bounds is not None:
            raise ValueError("bounds apply to the default search; the reference loop has none (see reference_init)")
        if self.search == "default" and self.reference_init is not None:
            raise ValueError("reference_init applies to search='reference'; the default search uses bounds")


def split_options(options: dict[str, Any]) -> tuple[AmplifyParams, ObjectiveParams, Objective | None, dict[str, Any]]:
    """DPA settings, objective settings, a callable objective (if given) and the options left for the method."""
    options = dict(options)
    callable_objective = options.pop("objective") if callable(options.get("objective")) else None
    chosen = []
    for cls in (AmplifyParams, ObjectiveParams):
        names = {f.name for f in dataclasses.fields(cls)}
        chosen.append(cls(**{k: options.pop(k) for k in list(options) if k in names}))
    return chosen[0], chosen[1], callable_objective, options


def _rescaled(adapter: SparseDeltaAdapter) -> bool:
    """Whether the pruning method already rescaled the kept values (DARE), so DPA searches a reduction."""
    return bool(adapter.config.method.get("params", {}).get("rescale", False))


def _search(adapter: SparseDeltaAdapter, partitions: Partitions, dpa: AmplifyParams, objective_params: ObjectiveParams,
            objective: Objective | None, finetuned: Any, base: Any, revision: str | None, base_revision: str | None,
            token: str | bool | None, progress: bool) -> tuple[SearchResult, dict[str, Any]]:
    """Search the factors with candidates built in place; returns the search and the objective's description."""
    objective = objective or build_objective(objective_params, finetuned, base, dpa.model_dtype, dpa.device,
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
    ``[P, R]`` factor tables of ``row_factors`` (tensors not in it store none), into ``folder``."""
    writer = AdapterWriter(folder)
    row_factors = row_factors or {}
    for name, record in adapter.config.tensors.items():
        encoded = dataclasses.replace(adapter.encoded(name), partition=partitions.ids.get(name),
                                      factors=row_factors.get(name))
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


def _amplify_into(folder: Path, adapter: SparseDeltaAdapter, options: dict[str, Any], finetuned: Any, base: Any,
                  revision: str | None, base_revision: str | None, token: str | bool | None, progress: bool,
                  provenance: dict[str, Any]) -> SearchResult | None:
    dpa, objective_params, objective, rest = split_options(options)
    if rest:
        raise ValueError(f"no DPA option named {sorted(rest)}; the options are the fields of AmplifyParams and "
                         "ObjectiveParams (see `dppa-peft amplify --help`)")
    partitions = adapter_partitions(adapter, dpa.partition_rates)
    result, search, raw = None, None, dpa.factors
    if raw is None:
        result, described = _search(adapter, partitions, dpa, objective_params, objective, finetuned,
                                    base or adapter.config.base_model_name_or_path, revision, base_revision, token,
                                    progress)
        raw, search = result.factors, result.record(described)
    block = amplification_block(partitions.rates, raw, dpa.combine, dpa.amplify_unpruned, search)
    write_amplified(adapter, folder, partitions, block, {**provenance, "package_version": __version__})
    return result


def amplify(adapter: str | os.PathLike | SparseDeltaAdapter, out: str | os.PathLike, *,
            finetuned: str | os.PathLike | None = None, base: str | os.PathLike | None = None,
            revision: str | None = None, base_revision: str | None = None, adapter_revision: str | None = None,
            token: str | bool | None = None, overwrite: bool = False, progress: bool = True,
            command: str | None = None, **options: Any) -> tuple[SparseDeltaAdapter, SearchResult | None]:
    """DPA on an existing adapter: search one factor per partition and write the amplified adapter to ``out``.

    ``options`` are ``AmplifyParams`` and ``ObjectiveParams`` fields; ``objective`` may also be a Python callable
    ``model -> score``. ``base`` defaults to the base recorded in the adapter; ``finetuned`` (the dense fine-tune)
    is needed by the ``kl`` and ``tasks`` objectives. Returns the new adapter and the search (None with
    ``factors=``).
    """
    handle = open_adapter(adapter, revision=adapter_revision, token=token)
    provenance = {"command": command or f"dppa_peft.amplify({handle.ref!r})", "amplified_from": handle.ref}
    inputs = [handle.directory, finetuned, base or handle.config.base_model_name_or_path]
    with atomic_directory(out, overwrite=overwrite, inputs=inputs) as tmp:
        result = _amplify_into(tmp, handle, options, finetuned, base, revision, base_revision, token, progress,
                               provenance)
    return SparseDeltaAdapter(out), result


def prune_and_amplify(base: str | os.PathLike, finetuned: str | os.PathLike, out: str | os.PathLike,
                      method: str = "dp", rate: float = 0.9, *, revision: str | None = None,
                      base_revision: str | None = None, token: str | bool | None = None, overwrite: bool = False,
                      progress: bool = True, command: str | None = None,
                      scope_pattern: str = DEFAULT_SCOPE_PATTERN,
                      outside_scope: str = "dense", value_dtype: str = "auto",
                      **options: Any) -> tuple[SparseDeltaAdapter, PruneSummary, SearchResult | None]:
    """Prune with ``method`` storing DPA partitions, then search the factors: DPPA when ``method='dp'``.

    ``options`` mixes the method's parameters with ``AmplifyParams`` / ``ObjectiveParams`` fields.
    """
    dpa_options = {k: options.pop(k) for k in list(options) if k in _DPA_FIELDS}
    rates: Sequence[float] = dpa_options.get("partition_rates") or default_partition_rates(rate)
    dpa_options["partition_rates"] = list(rates)
    provenance = {"command": command or f"dppa_peft.prune_and_amplify(method={method!r}, rate={rate})"}
    with atomic_directory(out, overwrite=overwrite, inputs=[base, finetuned]) as tmp:
        pruned, summary = prune(base, finetuned, tmp / "pruned", method, rate, scope_pattern=scope_pattern,
                                outside_scope=outside_scope, value_dtype=value_dtype, revision=revision,
                                base_revision=base_revision, token=token, progress=progress,
                                command=provenance["command"], partition_rates=rates, **options)
        result = _amplify_into(tmp, pruned, dpa_options, finetuned, base, revision, base_revision, token, progress,
                               provenance)
        shutil.rmtree(tmp / "pruned")
    return SparseDeltaAdapter(out), summary, result


_DPA_FIELDS = {f.name for cls in (AmplifyParams, ObjectiveParams) for f in dataclasses.fields(cls)}
