"""DPA from Python: ``amplify`` an existing adapter (``prune.api.prune_and_amplify`` prunes, then runs the same DPA
through ``amplify_into``; DPPA = DP then DPA).

Both write a new adapter folder whose config records the partitions, the factors and the whole search; the
search loads the base model once and applies candidate factors in place (``candidate.AmplifiedModel``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from ..core.version import __version__
from ..io.checkpoint import atomic_directory
from ..format.io import AdapterWriter
from ..publish.adapter import SparseDeltaAdapter, open_adapter
from ..methods.registry import recorded_method
from .spec import AmplifyParams, AmplifySpec, DpaRun, LearnParams, ObjectiveParams
from ..core.choices import LEARNED
from ..core.errors import UserError
from ..core.spec import Source
from .candidate import AmplifiedModel, load_base_model
from ..format.amplification import amplification_record
from .calibration import Prompt, check_lengths
from .learned import LearnResult, learn_factors, model_context, teacher_from_pretrained
from ..io.models import load_tokenizer
from .objectives import Objective, build_objective, calibration_prompts, describe_objective
from ..format.partitions import Partitions, adapter_partitions
from .search import SearchResult, default_bounds, search_factors

__all__ = ["AmplifyParams", "LearnParams", "ObjectiveParams", "amplify"]


def _rescaled(adapter: SparseDeltaAdapter) -> bool:
    """Whether the pruning method already rescaled the kept values (DARE), so DPA searches a reduction."""
    cls, params = recorded_method(adapter.config.method)
    return cls.rescales(params)


def _search(
    adapter: SparseDeltaAdapter,
    partitions: Partitions,
    spec: DpaRun,
    objective: Objective | None,
    base: Source,
    token: str | bool | None,
    progress: bool,
) -> tuple[SearchResult, dict[str, Any]]:
    """Search the factors with candidates built in place; returns the search and the objective's description."""
    dpa = spec.dpa
    objective = objective or build_objective(
        spec.dpa_objective, spec.finetuned, base, spec.dtype, spec.device, token=token
    )
    model = load_base_model(base.ref, adapter, spec.dtype, spec.device, revision=base.revision, token=token)
    candidate = AmplifiedModel(model, adapter, partitions, dpa.combine, dpa.amplify_unpruned)
    result = search_factors(
        lambda factors: objective(candidate.apply(factors)),
        partitions.count,
        dpa.search,
        dpa.dpa_method,
        bounds=dpa.bounds or default_bounds(_rescaled(adapter)),
        tol=dpa.tol,
        max_calls=dpa.max_calls,
        reference_init=dpa.reference_init,
        progress=progress,
    )
    return result, describe_objective(objective)


def write_amplified(
    adapter: SparseDeltaAdapter,
    folder: Path,
    partitions: Partitions,
    amplification: dict[str, Any],
    provenance: dict[str, Any],
    row_factors: dict[str, torch.Tensor] | None = None,
) -> None:
    """The adapter's stored tensors with the partition ids, the amplification block and (format version 2) the
    ``[P, R]`` factor tables of ``row_factors`` (tensors not in it store none; None keeps the tables the adapter
    already stores, which the searched partition factors then multiply), into ``folder``."""
    writer = AdapterWriter(folder)
    for name, record in adapter.config.tensors.items():
        stored = adapter.encoded(name)
        ids = partitions.ids.get(name)
        tables = (
            _kept_table(name, stored.factors, 1 if ids is None else partitions.count)
            if row_factors is None
            else row_factors.get(name)
        )
        encoded = dataclasses.replace(stored, partition=ids, factors=tables)
        densities = partitions.densities.get(name)
        described = {**record.described(), "partition_densities": None if densities is None else tuple(densities)}
        writer.add(name, encoded, **described)
    summary = dict(adapter.config.summary)
    kept_bytes = sum(r.stored_bytes or 0 for r in writer.records.values() if r.pruned)
    if summary.get("dense_delta_bytes"):
        summary.update(adapter_bytes=kept_bytes, size_ratio=kept_bytes / summary["dense_delta_bytes"])
    config = dataclasses.replace(
        adapter.config,
        tensors=writer.records,
        amplification=amplification,
        summary=summary,
        provenance={**adapter.config.provenance, **provenance},
    )
    writer.close(config)


Calibration = tuple[list[Prompt], Any]  # learned amplification's prompts and tokenizer


def calibration_for(spec: DpaRun, base: Source, token: str | bool | None) -> Calibration | None:
    """Learned amplification's prompts and tokenizer, checked (file, fields, lengths) before any model is loaded."""
    if spec.dpa.search != LEARNED:
        return None
    if spec.finetuned is None:
        raise UserError("search='learned' distils from the dense fine-tuned model; pass finetuned= (--finetuned)")
    params = spec.dpa_objective
    prompts = calibration_prompts(params)
    candidates = [params.tokenizer] if params.tokenizer else [spec.finetuned.ref, base.ref]
    tokenizer = load_tokenizer(candidates, token=token)
    context = model_context(spec.finetuned.ref, spec.finetuned.revision, token)
    check_lengths(prompts, tokenizer, context, params.continuation_tokens)
    return prompts, tokenizer


def _learn(
    adapter: SparseDeltaAdapter,
    partitions: Partitions,
    spec: DpaRun,
    calibration: Calibration,
    base: Source,
    token: str | bool | None,
    progress: bool,
) -> LearnResult:
    """Learned amplification: the teacher's outputs cached and the teacher freed, then the factors learned on the
    base model (one model on the device at a time)."""
    assert spec.finetuned is not None
    prompts, tokenizer = calibration
    teacher = teacher_from_pretrained(
        spec.finetuned.ref,
        tokenizer,
        prompts,
        continuation_tokens=spec.dpa_objective.continuation_tokens,
        batch_size=spec.dpa_objective.batch_size,
        params=spec.learn,
        dtype=spec.dtype,
        device=spec.device,
        revision=spec.finetuned.revision,
        token=token,
    )
    model = load_base_model(base.ref, adapter, spec.dtype, spec.device, revision=base.revision, token=token)
    return learn_factors(model, [adapter], [teacher], spec.learn, partitions=[partitions], progress=progress)


def _kept_table(name: str, table: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """A stored factor table for ``count`` partitions: as it is, or a one-partition table repeated for each."""
    if table is None or table.shape[0] == count:
        return table
    if table.shape[0] == 1:
        return table.expand(count, -1).contiguous()
    raise UserError(
        f"{name} stores learned factors for {table.shape[0]} partitions, not {count}; amplify with the "
        "partition rates it was learned with, or learn again (--search learned)"
    )


def _kept_scalars(adapter: SparseDeltaAdapter, partitions: Partitions, combine: str) -> tuple[list[float], str]:
    """The partition factors learned amplification keeps (it learns on top of them): the adapter's own when its
    partitions are these, else 1 each (the rule ``learned.Student`` applies)."""
    stored = adapter.config.amplification or {}
    if stored.get("partition_rates") == partitions.rates and len(stored.get("raw_factors", [])) == partitions.count:
        return list(stored["raw_factors"]), stored.get("combine", combine)
    return [1.0] * partitions.count, combine


def amplify_into(
    folder: Path,
    adapter: SparseDeltaAdapter,
    spec: DpaRun,
    objective: Objective | None,
    calibration: Calibration | None,
    base: Source,
    token: str | bool | None,
    progress: bool,
    provenance: dict[str, Any],
) -> SearchResult | LearnResult | None:
    dpa = spec.dpa
    rate = float(adapter.config.method["rate"])
    partitions = adapter_partitions(adapter, spec.partition_rates or ([rate] if dpa.search == LEARNED else None))
    result: SearchResult | LearnResult | None = None
    row_factors = None
    if calibration is not None:
        result = _learn(adapter, partitions, spec, calibration, base, token, progress)
        raw, combine = _kept_scalars(adapter, partitions, dpa.combine)
        record = amplification_record(partitions.rates, raw, combine, dpa.amplify_unpruned, None)
        record["learned"] = result.record()
        row_factors = result.factors[0]
    else:
        search = None
        if dpa.factors is None:
            result, described = _search(adapter, partitions, spec, objective, base, token, progress)
            raw, search = result.factors, result.record(described)
        else:
            raw = dpa.factors
        record = amplification_record(partitions.rates, raw, dpa.combine, dpa.amplify_unpruned, search)
    write_amplified(adapter, folder, partitions, record, {**provenance, "package_version": __version__}, row_factors)
    return result


def amplify(
    spec: AmplifySpec | str | os.PathLike | SparseDeltaAdapter,
    out: str | os.PathLike | None = None,
    *,
    token: str | bool | None = None,
    progress: bool = True,
    command: str | None = None,
    objective: Objective | None = None,
    **options: Any,
) -> tuple[SparseDeltaAdapter, SearchResult | LearnResult | None]:
    """DPA on an existing adapter: search one factor per partition and write the amplified adapter.

    Pass an :class:`~dppa_peft.amplify.spec.AmplifySpec`, or its keyword form ``amplify(adapter, out, finetuned=...,
    base=..., **options)`` where ``options`` are ``AmplifySpec``, ``AmplifyParams`` and ``ObjectiveParams`` fields.
    ``objective`` may be a Python callable ``model -> score`` (or a name, 'kl' or 'tasks'). ``base`` defaults to the
    base recorded in the adapter; ``finetuned`` (the dense fine-tune) is needed by the ``kl`` and ``tasks``
    objectives. Returns the new adapter and the search (None with ``factors=``).
    """
    handle = spec if isinstance(spec, SparseDeltaAdapter) else None
    objective = named_objective(objective, options)
    if not isinstance(spec, AmplifySpec):
        spec = AmplifySpec.build(spec if handle is None else handle.ref, out, **options)
    elif out is not None or options:
        raise UserError("pass either an AmplifySpec or an adapter, out and options, not both")
    if objective is None:
        spec.check_search_inputs()
    handle = handle or open_adapter(spec.adapter, token=token)
    provenance = {"command": command or f"dppa_peft.amplify({handle.ref!r})", "amplified_from": handle.ref}
    base = spec.base or Source(ref=handle.base_ref, revision=handle.config.revision)
    calibration = calibration_for(spec, base, token)
    finetuned = None if spec.finetuned is None else spec.finetuned.ref
    inputs: list[str | os.PathLike | None] = [handle.directory, finetuned, base.ref]
    assert spec.out is not None  # AmplifySpec.validate fills in the default
    with atomic_directory(spec.out, overwrite=spec.overwrite, inputs=inputs) as tmp:
        result = amplify_into(tmp, handle, spec, objective, calibration, base, token, progress, provenance)
    return SparseDeltaAdapter(spec.out), result


def named_objective(objective: Objective | str | None, options: dict[str, Any]) -> Objective | None:
    """A callable objective, or None after moving a named one ('kl', 'tasks') into the spec options."""
    if objective is None or callable(objective):
        return objective
    options["objective"] = objective
    return None
