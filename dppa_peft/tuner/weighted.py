"""PEFT's ``add_weighted_adapter`` for sparse delta adapters: a new adapter in the model, the merge of loaded ones.

``combination_type`` is any merge mode (``merge.modes``); PEFT's names ``linear``, ``ties``, ``dare_linear``,
``dare_ties`` and ``magnitude_prune`` keep PEFT's meaning (``peft.utils.merge_utils`` on each tensor's delta):
``density`` is the fraction of each tensor kept before combining (None: every stored entry), and
``majority_sign_method`` ("total" | "frequency") elects the sign on the unweighted deltas, the disjoint mean
dividing by the agreeing count (``semantics="peft"``). The new adapter stores the merged fp32 delta on the union
of the supports, like ``merge_to_adapter``, so it can be set active, merged and saved like any other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..format.config import SparseDeltaConfig
from ..format.encoding import EncodedTensor, encode
from ..format.fingerprint import model_fingerprint
from ..format.record import TensorRecord
from ..format.merge_record import MergeRecord, MergeSource, merged_adapter_config
from ..merge.modes import MergeMode, create_mode, get_mode
from ..methods.base import SparseDelta
from .layer import SparseDeltaLayer

MAJORITY_SIGN = {"total": "sum", "frequency": "count"}  # PEFT's majority_sign_method -> the TIES consensus


def peft_merge_mode(
    combination_type: str, density: float | None, majority_sign_method: str, **options: Any
) -> MergeMode:
    """The merge mode for PEFT's arguments (``options`` adds mode options such as ``seed`` or ``epsilon``)."""
    fields = {f.name for f in dataclasses.fields(get_mode(combination_type).Params)}
    if density is not None:
        if "density" not in fields:
            raise ValueError(f"density does not apply to combination_type {combination_type!r}")
        options["density"] = density
    if "consensus" in fields:
        if majority_sign_method not in MAJORITY_SIGN:
            raise ValueError(
                f"majority_sign_method must be one of {sorted(MAJORITY_SIGN)}, got {majority_sign_method!r}"
            )
        options.setdefault("consensus", MAJORITY_SIGN[majority_sign_method])
        options.setdefault("semantics", "peft")
    return create_mode(combination_type, **options)


def merged_layers(
    model: nn.Module, adapters: Sequence[str], weights: Sequence[float], mode: MergeMode
) -> dict[str, SparseDelta]:
    """The merged delta of every tensor (``module.param``) that one of ``adapters`` changes."""
    out = {}
    for module in model.modules():
        if not isinstance(module, SparseDeltaLayer):
            continue
        present = [(a, w) for a, w in zip(adapters, weights) if a in module.sparse_delta]
        for param in sorted({p for a, _ in present for p in module.store(a).records}):
            chosen = [
                (module.store(a).delta(param, torch.device("cpu")), w)
                for a, w in present
                if param in module.store(a).records
            ]
            name = f"{module.module_name}.{param}"
            out[name] = mode.merge(name, [d for d, _ in chosen], [w for _, w in chosen]).as_delta()
    return out


def weighted_adapter_config(
    configs: dict[str, SparseDeltaConfig],
    weights: Sequence[float],
    mode: MergeMode,
    encoded: dict[str, EncodedTensor],
    base_fingerprint: str | None,
) -> SparseDeltaConfig:
    """The config of the new adapter, with a merge record naming the loaded adapters it combines."""
    first = next(iter(configs.values()))
    sources = [
        MergeSource(
            ref=f"loaded adapter {name!r}",
            weight=float(w),
            method=dict(c.method),
            base_model=c.base_model_name_or_path,
            fingerprint=c.base_fingerprint,
        )
        for (name, c), w in zip(configs.items(), weights)
    ]
    record = MergeRecord(
        output="adapter",
        base=MergeSource(ref=first.base_model_name_or_path or "unknown", revision=first.revision),
        adapters=sources,
        mode=mode.name,
        params=dataclasses.asdict(mode.params),
        value_dtype="float32",
        command=f"PeftModel.add_weighted_adapter({list(configs)}, {list(weights)}, combination_type={mode.name!r})",
    )
    pruned = {name for c in configs.values() for name, r in c.tensors.items() if r.pruned}
    records = {name: TensorRecord.of(e, pruned=name in pruned) for name, e in sorted(encoded.items())}
    vocab = max((c.vocab_size or 0) for c in configs.values()) or None
    config = merged_adapter_config(record, records, base_fingerprint, vocab_size=vocab)
    config.task_type, config.inference_mode = first.task_type, first.inference_mode
    return config


def add_weighted_adapter(
    tuner: Any,
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    combination_type: str = "linear",
    density: float | None = None,
    majority_sign_method: str = "total",
    **options: Any,
) -> None:
    """PEFT's ``add_weighted_adapter`` (``SparseDeltaModel`` has it as a method): add ``adapter_name`` to ``tuner``,
    the merge of its loaded ``adapters`` with ``weights``.

    ``combination_type``: "linear", "ties", "dare_linear", "dare_ties", "magnitude_prune" (PEFT's meaning) or
    any other merge mode (``dppa_peft.merge.MERGE_MODES``); see the module doc. The new adapter is a sparse
    delta adapter on the union of the supports; activate it with ``set_adapter`` and save it like any other.
    """
    missing = [a for a in adapters if a not in tuner.peft_config]
    if missing or not adapters:
        raise ValueError(f"adapters {missing or adapters} do not exist; loaded: {sorted(tuner.peft_config)}")
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters; pass one weight per adapter")
    if adapter_name in tuner.peft_config:
        raise ValueError(f"adapter {adapter_name!r} exists already; delete it first or choose another name")
    mode = peft_merge_mode(combination_type, density, majority_sign_method, **options)
    merged = merged_layers(tuner.model, adapters, weights, mode)
    encoded = {name: encode(delta, torch.float32, dense=delta.nnz == delta.numel) for name, delta in merged.items()}
    any_merged = any(m.merged for m in tuner.model.modules() if isinstance(m, SparseDeltaLayer))
    fingerprint = None if any_merged else model_fingerprint(tuner.model, sorted(encoded))
    configs = {a: tuner.peft_config[a] for a in adapters}
    tuner.peft_config[adapter_name] = weighted_adapter_config(configs, weights, mode, encoded, fingerprint)
    tuner.inject_adapter(tuner.model, adapter_name)
    for module in tuner.model.modules():
        if isinstance(module, SparseDeltaLayer) and adapter_name in module.sparse_delta:
            store = module.store(adapter_name)
            for param in store.records:
                _fill(store, param, encoded[f"{module.module_name}.{param}"])
            store.requires_grad_(False)


def _fill(store: nn.Module, param: str, encoded: EncodedTensor) -> None:
    """Copy the stored parts of one encoded tensor into the (zero-initialised) parameters of a new store."""
    for part, tensor in (("values", encoded.values), ("index", encoded.index), ("partition", encoded.partition)):
        if tensor is not None:
            target = getattr(store, f"{param}_{part}")
            target.data.copy_(tensor.to(target.device, target.dtype))
