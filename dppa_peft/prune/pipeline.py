"""From two checkpoints to a sparse delta adapter folder: pair, (statistics pass), prune, encode, write."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..core.version import __version__
from ..format.config import SparseDeltaConfig
from ..core.errors import UserError
from ..format.encoding import EncodedTensor, encode, encode_dense
from ..format.fingerprint import fingerprint
from ..format.io import AdapterWriter
from ..publish.adapter import SparseDeltaAdapter
from ..format.record import TensorRecord
from ..format.amplification import amplification_record
from ..methods.partitions import partition_ids
from ..io.base_ref import base_id_record, portable_ref
from ..io.checkpoint import atomic_directory
from ..delta.pair import DeltaPair, is_changed, open_pair
from ..core.devices import compute_dtype, resolve_device
from ..methods import DensityPlan, PruningMethod, SparseDelta, create_method
from ..methods.selection import magnitude_indices
from ..delta.scope import TensorInfo
from ..core.validate import all_finite
from ..core.devices import torch_dtype
from .spec import PruneSpec

logger = logging.getLogger(__name__)
DENSITY_FLOOR = 0.1  # warn for tensors planned below this fraction of the target density
SHOWN_TENSORS = 5


@dataclass
class PruneSummary:
    """What one pruning run kept and stored."""

    kept_density: float
    pruned_tensors: int
    dense_tensors: int
    unchanged_tensors: int
    adapter_bytes: int
    dense_delta_bytes: int
    seconds: float

    @property
    def size_ratio(self) -> float:
        """Stored size of the pruned tensors vs their dense delta in the checkpoint dtype."""
        return self.adapter_bytes / self.dense_delta_bytes if self.dense_delta_bytes else 0.0

    def line(self) -> str:
        return (
            f"kept density {self.kept_density:.4f} over {self.pruned_tensors} pruned tensors "
            f"({self.dense_tensors} dense, {self.unchanged_tensors} unchanged); pruned tensors stored in "
            f"{self.adapter_bytes / 2**20:.2f} MiB = {self.size_ratio:.1%} of their dense delta "
            f"({self.dense_delta_bytes / 2**20:.2f} MiB); {self.seconds:.1f} s"
        )


def collect_statistics(
    method: PruningMethod,
    pair: DeltaPair,
    progress: bool = True,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """The global statistics passes of methods like DP and OWL, streamed tensor by tensor, block after block (each
    delta on ``device`` in ``dtype``)."""
    if not method.needs_statistics:
        return
    in_scope = sorted((i for i in pair.infos if i.in_scope), key=lambda info: info.block or 0)  # in scope: a block
    for pass_index in range(method.statistics_passes):
        for info, delta in pair.deltas(
            in_scope, desc=f"statistics {pass_index + 1}", progress=progress, device=device, dtype=dtype
        ):
            method.observe(info, delta, pass_index)


def plan_densities(
    pair: DeltaPair, method: str, rate: float, progress: bool = True, **params: Any
) -> list[tuple[TensorInfo, DensityPlan]]:
    """The density a method would keep for every in-scope tensor (runs its statistics passes, prunes nothing)."""
    pruner = create_method(method, rate, **params)
    collect_statistics(pruner, pair, progress)
    return [(info, pruner.plan(info)) for info in pair.infos if info.in_scope]


def _outside_scope(delta: torch.Tensor, mode: str, rate: float, stored_dtype: torch.dtype) -> EncodedTensor | None:
    """How a changed tensor outside the pruning scope is stored: whole, magnitude-pruned at ``rate``, or not."""
    if mode == "dense":
        return encode_dense(delta.cpu(), stored_dtype)
    if mode == "magnitude":
        return encode(SparseDelta.from_indices(delta, magnitude_indices(delta, 1.0 - rate)).to("cpu"), stored_dtype)
    return None


def prune_into(
    spec: PruneSpec, out: str | os.PathLike, *, token: str | bool | None, progress: bool, command: str | None
) -> tuple[SparseDeltaAdapter, PruneSummary]:
    """The pruning run itself, into ``out`` (``spec.out``, or a temp folder of ``prune_and_amplify``)."""
    start = time.perf_counter()
    on, compute = resolve_device(spec.device), compute_dtype(spec.dtype)
    pruner = create_method(spec.method, spec.rate, **spec.params)
    rates = None if spec.partition_rates is None else list(spec.partition_rates)
    pair = open_pair(spec.base, spec.finetuned, spec.scope_pattern, token=token)
    base_id = base_id_record(spec.base.ref, pair.base, spec.base_model_id, token=token)
    counts = {"kept": 0, "numel": 0, "pruned": 0, "dense": 0, "unchanged": 0, "stored": 0, "dense_bytes": 0}
    samples: dict[str, bytes] = {}
    inputs: list[str | os.PathLike] = [spec.base.ref, spec.finetuned.ref, pair.base.directory, pair.finetuned.directory]
    with atomic_directory(out, overwrite=spec.overwrite, inputs=inputs) as tmp:  # checked and locked before any work
        collect_statistics(pruner, pair, progress, on, compute)
        writer = AdapterWriter(tmp)
        for info, delta in pair.deltas(desc=f"pruning ({spec.method})", progress=progress, device=on, dtype=compute):
            if not is_changed(delta):
                counts["unchanged"] += 1
                continue
            stored_dtype = torch_dtype(spec.value_dtype) or pair.finetuned.dtype(info.name)
            record = _prune_one(pruner, info, delta, spec.outside_scope, stored_dtype, writer, rates)
            if record is None:
                continue
            samples[info.name] = pair.base_samples[info.name]
            if record.pruned:
                counts["pruned"] += 1
                counts["kept"] += record.nnz
                counts["numel"] += info.numel
                counts["stored"] += record.stored_bytes or 0
                counts["dense_bytes"] += info.numel * stored_dtype.itemsize
            else:
                counts["dense"] += 1
        summary = PruneSummary(
            kept_density=counts["kept"] / counts["numel"] if counts["numel"] else 0.0,
            pruned_tensors=counts["pruned"],
            dense_tensors=counts["dense"],
            unchanged_tensors=counts["unchanged"],
            adapter_bytes=counts["stored"],
            dense_delta_bytes=counts["dense_bytes"],
            seconds=time.perf_counter() - start,
        )
        config = SparseDeltaConfig(
            base_model_name_or_path=portable_ref(spec.base.ref),
            revision=spec.base.revision,
            base_fingerprint=fingerprint(samples),
            method=pruner.describe(),
            scope_pattern=spec.scope_pattern,
            outside_scope=spec.outside_scope,
            tensors=writer.records,
            vocab_size=_vocab_size(pair),
            inference_mode=True,
            task_type="CAUSAL_LM",
            summary={
                "kept_density": summary.kept_density,
                "size_ratio": summary.size_ratio,
                "adapter_bytes": summary.adapter_bytes,
                "dense_delta_bytes": summary.dense_delta_bytes,
            },
            amplification=None if rates is None else amplification_record(rates, [1.0] * len(rates)),
            provenance={
                "command": command or f"dppa_peft.prune(method={spec.method!r}, rate={spec.rate})",
                "finetuned": portable_ref(spec.finetuned.ref),
                "package_version": __version__,
                **base_id,
                "device": on.type,
                "compute_dtype": str(compute).removeprefix("torch."),
            },
        )
        writer.close(config)
    warn_sparse_modules(writer.records, spec.rate)
    return SparseDeltaAdapter(out), summary


def _prune_one(
    pruner: PruningMethod,
    info: TensorInfo,
    delta: torch.Tensor,
    outside_scope: str,
    stored_dtype: torch.dtype,
    writer: AdapterWriter,
    partition_rates: list[float] | None,
) -> TensorRecord | None:
    """Prune (or keep dense) one delta and write it (with DPA partition ids); None when the policy drops it."""
    if info.in_scope:
        plan = pruner.plan(info)
        sparse = pruner.prune(info, delta, plan.density)
        ids, extra = None, {}
        if partition_rates is not None and len(partition_rates) > 1:
            ids, densities = partition_ids(pruner, info, delta, sparse, partition_rates)
            extra["partition_densities"] = densities
        sparse = sparse.to("cpu")
        ids = None if ids is None else ids.cpu()
        encoded = _checked(info, encode(sparse, stored_dtype, partition=ids), sparse.values)
        return writer.add(
            info.name,
            encoded,
            pruned=True,
            block=info.block,
            module=info.module,
            planned_density=plan.density,
            unclipped_density=plan.unclipped,
            **extra,
        )
    kept = _outside_scope(delta, outside_scope, pruner.rate, stored_dtype)
    if kept is None:
        return None
    return writer.add(info.name, _checked(info, kept, delta), pruned=False)


def _checked(info: TensorInfo, encoded: EncodedTensor, values: torch.Tensor) -> EncodedTensor:
    """``encoded``, refusing values that overflow the stored dtype (float16 tops out at 65504)."""
    if not all_finite(encoded.values):
        big = float(values.abs().max())
        dtype = encoded.values.dtype
        kind = str(dtype).removeprefix("torch.")
        raise UserError(
            f"tensor {info.name!r}: delta values up to {big:.4g} overflow --value-dtype {kind} (largest "
            f"finite {torch.finfo(dtype).max:.4g}); use --value-dtype bfloat16 or float32"
        )
    return encoded


def warn_sparse_modules(records: Mapping[str, TensorRecord], rate: float) -> list[str]:
    """Warn about pruned tensors planned below ``DENSITY_FLOOR`` × the target density (DP can plan 0 for a module).

    Returns their names.
    """
    floor = DENSITY_FLOOR * (1.0 - rate)
    planned = {name: r.planned_density for name, r in records.items() if r.pruned and r.planned_density is not None}
    low = [name for name, density in planned.items() if density < floor]
    if low:
        shown = ", ".join(f"{n} ({planned[n]:.4g})" for n in low[:SHOWN_TENSORS])
        more = f" and {len(low) - SHOWN_TENSORS} more" if len(low) > SHOWN_TENSORS else ""
        logger.warning(
            "%d pruned tensors are planned below %.4g density (%.0f%% of the target %.4g): %s%s; check "
            "the method's lam / outlier settings (`dppa-peft inspect` shows the plan)",
            len(low),
            floor,
            100 * DENSITY_FLOOR,
            1.0 - rate,
            shown,
            more,
        )
    return low


def _vocab_size(pair: DeltaPair) -> int | None:
    if not pair.extra_rows:
        return None
    return max(pair.finetuned.shape(name)[0] for name in pair.extra_rows)


__all__ = ["PruneSummary", "collect_statistics", "plan_densities", "prune_into"]
