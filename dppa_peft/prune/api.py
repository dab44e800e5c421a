"""``prune`` and ``prune_and_amplify``: the Python API of ``dppa-peft prune`` (with ``--amplify``: DPPA in one run).

``prune`` runs the pipeline (``pipeline.prune_into``); ``prune_and_amplify`` prunes into a temporary folder storing
DPA partitions, then runs DPA on it (``amplify.api``) into the output.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

from ..amplify.api import amplify_into, calibration_for, named_objective
from ..amplify.learned import LearnResult
from ..amplify.objectives import Objective
from ..amplify.search import SearchResult
from ..core.choices import LEARNED
from ..core.errors import UserError
from ..core.output import atomic_directory
from ..core.spec import Source
from ..methods.partitions import default_partition_rates
from ..publish.adapter import SparseDeltaAdapter
from .pipeline import PruneSummary, prune_into
from .spec import PruneSpec


def prune(
    spec: PruneSpec | str | os.PathLike,
    finetuned: str | os.PathLike | Source | None = None,
    out: str | os.PathLike | None = None,
    *,
    token: str | bool | None = None,
    progress: bool = True,
    command: str | None = None,
    **options: Any,
) -> tuple[SparseDeltaAdapter, PruneSummary]:
    """Prune ``finetuned − base`` as ``spec`` says and write a sparse delta adapter folder to ``spec.out``.

    Pass a :class:`~dppa_peft.prune.spec.PruneSpec`, or its keyword form ``prune(base, finetuned, out, method="dp",
    rate=0.9, **options)`` where ``options`` are spec fields and the method's hyperparameters by name (see
    ``dppa-peft prune --help``). ``partition_rates`` (DPA, e.g. ``[0.9, 0.8]`` for rate 0.8) stores a partition id
    per kept entry and an ``amplification`` block with factors 1.0; ``dppa_peft.amplify`` then searches the
    factors (``prune_and_amplify`` does both). Returns the saved adapter and a summary of what was kept.
    """
    spec = as_prune_spec(spec, finetuned, out, options)
    if spec.amplify:
        raise UserError("this spec asks for DPA (amplify=True); run it with dppa_peft.prune_and_amplify(spec)")
    return prune_into(spec, spec.out, token=token, progress=progress, command=command)


def as_prune_spec(spec: PruneSpec | str | os.PathLike, finetuned: Any, out: Any, options: dict[str, Any]) -> PruneSpec:
    """A PruneSpec as given, or built from the keyword form."""
    if isinstance(spec, PruneSpec):
        if finetuned is not None or out is not None or options:
            raise UserError("pass either a PruneSpec or base, finetuned, out and options, not both")
        return spec
    if finetuned is None or out is None:
        raise UserError("prune needs a base, a fine-tuned model and an output folder (or a PruneSpec)")
    return PruneSpec.build(spec, finetuned, out, **options)


def prune_and_amplify(
    spec: PruneSpec | str | os.PathLike,
    finetuned: str | os.PathLike | Source | None = None,
    out: str | os.PathLike | None = None,
    *,
    token: str | bool | None = None,
    progress: bool = True,
    command: str | None = None,
    objective: Objective | None = None,
    **options: Any,
) -> tuple[SparseDeltaAdapter, PruneSummary, SearchResult | LearnResult | None]:
    """Prune storing DPA partitions, then search the factors: DPPA with ``method='dp'``.

    Takes a :class:`~dppa_peft.prune.spec.PruneSpec` (``amplify`` is implied) or the keyword form of ``prune``, whose
    ``options`` may mix the method's parameters with ``AmplifyParams`` / ``ObjectiveParams`` fields.
    """
    objective = named_objective(objective, options)
    spec = as_prune_spec(spec, finetuned, out, {**options, "amplify": True} if options else options)
    learned = spec.dpa.search == LEARNED
    rates = spec.partition_rates or ([spec.rate] if learned else default_partition_rates(spec.rate))
    spec = dataclasses.replace(spec, amplify=True, partition_rates=list(rates))
    if objective is None:
        spec.check_search_inputs()
    calibration = calibration_for(spec, spec.base, token)
    provenance = {"command": command or f"dppa_peft.prune_and_amplify(method={spec.method!r}, rate={spec.rate})"}
    with atomic_directory(spec.out, overwrite=spec.overwrite, inputs=[spec.base.ref, spec.finetuned.ref]) as tmp:
        pruned, summary = prune_into(
            spec, tmp / "pruned", token=token, progress=progress, command=provenance["command"]
        )
        result = amplify_into(tmp, pruned, spec, objective, calibration, spec.base, token, progress, provenance)
        shutil.rmtree(tmp / "pruned")
    return SparseDeltaAdapter(spec.out), summary, result


__all__ = ["PruneSummary", "as_prune_spec", "prune", "prune_and_amplify"]
