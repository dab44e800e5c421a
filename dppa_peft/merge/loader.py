"""Merge a base plus N sparse delta adapters: ``W = W_B + merged(δ_1..δ_N)`` with a merge mode (``merge.modes``;
docs/algorithms.md §12.3–§12.5).

Three outputs of the same per-tensor merge (``MergeMode.merge``), so they agree bit for bit:
``load_merged`` (a transformers model in memory), ``merge_to_folder`` (a dense model folder, streamed tensor by
tensor) and ``merge_to_adapter`` (a merged sparse adapter: union support, values = the combined delta). The folder
and the adapter carry a model card and the record of the merge (``format.merge_record``); ``replay`` runs a record
again. Every weight is written by the one kernel (``kernel.weights``): fp32 accumulation, one cast.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from ..core.progress import progress_bar

from ..core.version import __version__
from ..core.errors import UserError
from ..io.checkpoint import HUB_PATTERNS, Checkpoint, ShardedWriter, atomic_directory, resolve_repo
from ..io.models import device_placement, load_causal_lm, resize_vocabulary
from ..core.devices import resolve_device
from ..format.encoding import encode
from ..format.fingerprint import check_fingerprint, fingerprint
from ..io.sampling import checkpoint_sample, model_sampler, tensor_sample
from ..format.io import AdapterWriter
from ..format.merge_record import MergeRecord, MergeSource, merged_adapter_config, read_record, source_of
from ..format.validate import check_fits_base, require_fingerprint
from ..methods.base import SparseDelta
from ..publish.adapter import SparseDeltaAdapter, open_adapter
from ..core.devices import torch_dtype
from ..core.spec import Source
from ..publish.merge_card import write_merge_card
from .modes import MergedTensor, MergeMode, create_mode
from .spec import MergeInputs, MergeSpec

SKIPPED_FILES = (
    ".safetensors",
    ".safetensors.index.json",
    ".bin",
    ".pt",
    ".pth",
    ".msgpack",
    ".h5",
    "README.md",
    ".gitattributes",
)

AdapterRef = str | os.PathLike | SparseDeltaAdapter | Source


def combine_tensor(
    target: torch.Tensor,
    deltas: Sequence[SparseDelta],
    weights: Sequence[float],
    mode: str | MergeMode = "sum",
    *,
    name: str = "",
    **options: Any,
) -> torch.Tensor:
    """``target`` plus the merge of ``deltas`` (tensor ``name``: it seeds random drops), in ``target``'s dtype."""
    merger = mode if isinstance(mode, MergeMode) else create_mode(mode, **options)
    return merger.merge(name, deltas, weights).apply(target)


def _inputs(
    cls: type[MergeInputs],
    base: str | os.PathLike | None,
    adapters: Sequence[AdapterRef],
    out: str | os.PathLike | None,
    weights: Sequence[float] | None,
    mode: str | MergeMode,
    options: dict[str, Any],
    **fields: Any,
) -> tuple[Any, MergeMode | None]:
    """The spec of a keyword call (``MergeInputs`` or ``MergeSpec``: every check is the spec's), and the mode
    instance when one was given (its options are set when it is created)."""
    instance = None
    if isinstance(mode, MergeMode):
        if options:
            raise ValueError(f"pass the options of merge mode {mode.name!r} when creating it, not with the instance")
        instance = mode
        mode, options = instance.name, asdict(instance.params)
    given = None if weights is None else list(weights)
    return cls.build(base, adapters, out, weights=given, mode=mode, **fields, **options), instance


def _open(
    spec: MergeInputs, adapters: Sequence[AdapterRef], token: str | bool | None
) -> tuple[list[SparseDeltaAdapter], list[MergeSource]]:
    """Open the adapters (a given handle as it is; each must record a base fingerprint unless
    ``allow_unverified_base``) and describe them."""
    handles = [
        given if isinstance(given, SparseDeltaAdapter) else open_adapter(source, token=token)
        for given, source in zip(adapters, spec.adapters)
    ]
    for handle in handles:
        require_fingerprint(handle.config, handle.ref, spec.allow_unverified_base)
    sources = []
    for source_spec, handle, weight in zip(spec.adapters, handles, spec.adapter_weights):
        source = source_of(source_spec.ref, source_spec.revision, handle.directory)
        source.weight, source.method = weight, dict(handle.config.method)
        source.base_model, source.fingerprint = handle.config.base_model_name_or_path, handle.config.base_fingerprint
        sources.append(source)
    return handles, sources


def _setup(
    spec: MergeInputs,
    adapters: Sequence[AdapterRef],
    merger: MergeMode | None,
    token: str | bool | None,
    progress: bool,
) -> tuple[MergeMode, list[SparseDeltaAdapter], list[float], list[MergeSource]]:
    """The merge mode (the spec's, or the given instance), and the adapters as it merges them
    (``MergeMode.prepare``: learned modes learn their factors here, once per instance and inputs)."""
    assert spec.base is not None
    merger = merger or create_mode(spec.mode, **spec.params)
    handles, sources = _open(spec, adapters, token)
    weights = spec.adapter_weights
    prepared = merger.prepare(spec.base.ref, handles, weights, device=spec.device, progress=progress)
    return merger, prepared, weights, sources


def _tensor_names(adapters: Sequence[SparseDeltaAdapter]) -> list[str]:
    return sorted({name for a in adapters for name in a.config.tensors})


def _merged(
    merger: MergeMode, name: str, adapters: Sequence[SparseDeltaAdapter], weights: Sequence[float]
) -> MergedTensor:
    """The merge of tensor ``name`` over the adapters that store it."""
    chosen = [(a.sparse_tensor(name), w) for a, w in zip(adapters, weights) if name in a.config.tensors]
    return merger.merge(name, [d for d, _ in chosen], [w for _, w in chosen])


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def load_merged(
    base: str | os.PathLike,
    adapters: Sequence[AdapterRef],
    weights: Sequence[float] | None = None,
    mode: str = "sum",
    *,
    revision: str | None = None,
    adapter_revisions: Sequence[str | None] | None = None,
    token: str | bool | None = None,
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    progress: bool = True,
    allow_unverified_base: bool = False,
    device: str = "cpu",
    **options: Any,
) -> torch.nn.Module:
    """Load ``base`` with transformers and merge every adapter into its weights in place; returns the model.

    ``mode`` is a merge mode (``merge.modes.MERGE_MODES``) and ``options`` its options (e.g. ``density=0.5``), or
    a mode instance (``create_mode``). Learned modes (``learned``, ``adamerging``) first learn the adapters' factors
    on ``device`` (``merge.learned``).
    ``base`` and every adapter may be a local folder or a Hub id (``revision`` / ``adapter_revisions`` pick the
    versions; the base is downloaded once into the HF cache, and ``model.name_or_path`` is that local folder).
    """
    spec, instance = _inputs(
        MergeInputs,
        base,
        adapters,
        None,
        weights,
        mode,
        options,
        revision=revision,
        adapter_revisions=adapter_revisions,
        allow_unverified_base=allow_unverified_base,
        device=device,
    )
    merger, handles, weights, _ = _setup(spec, adapters, instance, token, progress)
    folder = resolve_repo(
        base, revision=revision, token=token, allow_patterns=HUB_PATTERNS + ["*.py"] if trust_remote_code else None
    )
    placement = device_placement(device)
    model = load_causal_lm(folder, dtype=dtype, trust_remote_code=trust_remote_code, **placement)
    return _merge_handles(model, handles, weights, merger, str(base), progress)


def merge_into(
    model: torch.nn.Module,
    adapters: Sequence[AdapterRef],
    weights: Sequence[float] | None = None,
    mode: str = "sum",
    *,
    adapter_revisions: Sequence[str | None] | None = None,
    token: str | bool | None = None,
    progress: bool = True,
    allow_unverified_base: bool = False,
    **options: Any,
) -> torch.nn.Module:
    """Merge every adapter into the weights of an already loaded ``model``, in place, on each weight's device.

    As :func:`load_merged` for a model loaded elsewhere (e.g. by lm-eval, dispatched with ``device_map``). Weights
    offloaded to the meta device (accelerate's cpu/disk offload) cannot be changed in place and are refused.
    """
    spec, _ = _inputs(
        MergeInputs,
        None,
        adapters,
        None,
        weights,
        mode,
        options,
        adapter_revisions=adapter_revisions,
        allow_unverified_base=allow_unverified_base,
    )
    merger = create_mode(spec.mode, **spec.params)
    handles, _ = _open(spec, adapters, token)
    weights = spec.adapter_weights
    return _merge_handles(
        model, handles, weights, merger, str(getattr(model, "name_or_path", "") or "the model"), progress
    )


def _merge_handles(
    model: torch.nn.Module,
    handles: Sequence[SparseDeltaAdapter],
    weights: Sequence[float],
    merger: MergeMode,
    base: str,
    progress: bool,
) -> torch.nn.Module:
    """Check the adapters fit ``model`` and merge them into its weights in place."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for handle in handles:
        check_fits_base(handle.config, shapes, handle.ref, base)
        check_fingerprint(handle.config, model_sampler(model), handle.ref, base)
    resize_vocabulary(model, max((h.config.vocab_size or 0 for h in handles), default=0) or None)
    params = dict(model.named_parameters())
    names = _tensor_names(handles)
    offloaded = [name for name in names if name in params and params[name].device.type == "meta"]
    if offloaded:
        raise UserError(
            f"{len(offloaded)} weights the adapters change (e.g. {offloaded[0]}) are offloaded by the "
            "device map (meta device); merging needs them in memory: give the device map room for them "
            "(e.g. max_cpu_memory), or write the merged model once with `dppa-peft merge` and load that"
        )
    with torch.no_grad():
        for name in progress_bar(names, desc=f"merging ({merger.name})", unit="tensor", disable=not progress):
            if name not in params:
                raise ValueError(f"adapter tensor {name!r} is not a parameter of {base}; the adapter does not fit")
            _merged(merger, name, handles, weights).apply_(params[name].data)
    return model


def merge_to_folder(
    base: str | os.PathLike,
    adapters: Sequence[AdapterRef],
    out: str | os.PathLike,
    weights: Sequence[float] | None = None,
    mode: str | MergeMode = "sum",
    *,
    revision: str | None = None,
    adapter_revisions: Sequence[str | None] | None = None,
    token: str | bool | None = None,
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_shard_bytes: int = 4 << 30,
    command: str | None = None,
    allow_unverified_base: bool = False,
    device: str = "cpu",
    **options: Any,
) -> Path:
    """Stream ``base`` tensor by tensor, add the merged deltas, and write a dense model folder to ``out``.

    ``dtype`` (None/"auto": each base tensor's dtype) is the dtype of every written weight and of ``config.json``;
    merged weights are computed in fp32 from the base values and cast once (a bf16 base merged to float32 is not
    rounded to bf16 first). The folder also holds a model card and ``dppa_merge.json`` (the record ``replay`` runs).
    ``device`` ("cuda", "auto", ...) is where each touched tensor is merged, one at a time. The arguments are
    checked as a :class:`~dppa_peft.merge.spec.MergeSpec` (``out``).
    """
    spec, instance = _inputs(
        MergeSpec,
        base,
        adapters,
        out,
        weights,
        mode,
        options,
        revision=revision,
        adapter_revisions=adapter_revisions,
        dtype=dtype,
        overwrite=overwrite,
        allow_unverified_base=allow_unverified_base,
        device=device,
    )
    return write_model(
        spec, instance, adapters, token=token, progress=progress, command=command, max_shard_bytes=max_shard_bytes
    )


def write_model(
    spec: MergeSpec,
    merger: MergeMode | None = None,
    adapters: Sequence[AdapterRef] | None = None,
    *,
    token: str | bool | None = None,
    progress: bool = True,
    command: str | None = None,
    max_shard_bytes: int = 4 << 30,
) -> Path:
    """``merge_to_folder`` of a spec: the dense model folder ``spec.out`` (``merger``: a mode instance to use,
    e.g. one a learned mode already prepared; ``adapters``: open handles of ``spec.adapters``)."""
    assert spec.base is not None and spec.out is not None
    base, revision, out = spec.base.ref, spec.base.revision, spec.out
    dtype, on = torch_dtype(spec.dtype), resolve_device(spec.device)
    merger, handles, weights, sources = _setup(spec, adapters or spec.adapters, merger, token, progress)
    checkpoint, record = _start("model", base, revision, token, command, merger, handles, sources)
    record.dtype = _dtype_name(dtype)
    touched = set(_tensor_names(handles))
    samples: dict[str, bytes] = {}
    inputs: list[str | os.PathLike] = [base, checkpoint.directory, *(h.directory for h in handles)]
    with atomic_directory(out, overwrite=spec.overwrite, inputs=inputs) as tmp:
        writer = ShardedWriter(tmp, max_shard_bytes=max_shard_bytes)
        for name in progress_bar(
            checkpoint.names(), desc=f"merging ({merger.name})", unit="tensor", disable=not progress
        ):
            tensor = checkpoint.read(name)
            if name in touched:
                samples[name] = tensor_sample(tensor)
                merged = _merged(merger, name, handles, weights)
                tensor = _grow_rows(tensor, merged.deltas[0].shape[0])
                tensor = tensor.to(on) if dtype is None else tensor.to(on, torch.float32)  # dtype: one cast, of the sum
                tensor = merged.apply(tensor).cpu()
            writer.add(name, tensor if dtype is None else tensor.to(dtype))
        for handle in handles:
            check_fingerprint(handle.config, samples.__getitem__, handle.ref, str(base))
        writer.close()
        _copy_model_files(
            checkpoint.directory, tmp, vocab_size=max((h.config.vocab_size or 0) for h in handles), dtype=record.dtype
        )
        record.save(tmp)
        write_merge_card(tmp, record)
    return Path(out)


def merge_to_adapter(
    base: str | os.PathLike,
    adapters: Sequence[AdapterRef],
    out: str | os.PathLike,
    weights: Sequence[float] | None = None,
    mode: str | MergeMode = "sum",
    *,
    revision: str | None = None,
    adapter_revisions: Sequence[str | None] | None = None,
    token: str | bool | None = None,
    value_dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    allow_unverified_base: bool = False,
    device: str = "cpu",
    **options: Any,
) -> SparseDeltaAdapter:
    """Write the merge as ONE sparse delta adapter: union support, values = the merged fp32 delta.

    Every amplification factor is baked into the values, so the adapter loads like any other (PEFT, transformers'
    ``load_adapter``, ``load_merged``) and gives the weights ``load_merged(base, adapters, weights, mode)`` gives:
    bit for bit for election modes and for one adapter, to fp32 rounding for sums of several (the merged values
    are summed before, not after, they meet the base). ``value_dtype`` (default float32, exact) may be bfloat16
    or float16 for half the size. Of the base, only the rows holding the fingerprint samples are read. The arguments
    are checked as a :class:`~dppa_peft.merge.spec.MergeSpec` (``out_adapter``).
    """
    spec, instance = _inputs(
        MergeSpec,
        base,
        adapters,
        None,
        weights,
        mode,
        options,
        out_adapter=str(out),
        revision=revision,
        adapter_revisions=adapter_revisions,
        value_dtype=value_dtype,
        overwrite=overwrite,
        allow_unverified_base=allow_unverified_base,
        device=device,
    )
    return write_adapter(spec, instance, adapters, token=token, progress=progress, command=command)


def write_adapter(
    spec: MergeSpec,
    merger: MergeMode | None = None,
    adapters: Sequence[AdapterRef] | None = None,
    *,
    token: str | bool | None = None,
    progress: bool = True,
    command: str | None = None,
) -> SparseDeltaAdapter:
    """``merge_to_adapter`` of a spec: the merged adapter ``spec.out_adapter`` (``merger`` and ``adapters`` as in
    :func:`write_model`)."""
    assert spec.base is not None and spec.out_adapter is not None
    base, revision, out = spec.base.ref, spec.base.revision, spec.out_adapter
    stored_dtype = torch_dtype(spec.value_dtype)
    assert stored_dtype is not None  # MergeSpec's choices: float32, bfloat16, float16
    merger, handles, weights, sources = _setup(spec, adapters or spec.adapters, merger, token, progress)
    checkpoint, record = _start("adapter", base, revision, token, command, merger, handles, sources)
    record.value_dtype = _dtype_name(stored_dtype)
    names = _tensor_names(handles)
    samples: dict[str, bytes] = {}
    inputs: list[str | os.PathLike] = [base, checkpoint.directory, *(h.directory for h in handles)]
    with atomic_directory(out, overwrite=spec.overwrite, inputs=inputs) as tmp:
        writer = AdapterWriter(tmp)
        for name in progress_bar(names, desc=f"merging ({merger.name})", unit="tensor", disable=not progress):
            samples[name] = checkpoint_sample(checkpoint, name)  # a few rows, not the whole tensor
            delta = _merged(merger, name, handles, weights).as_delta()
            pruned = any(h.config.tensors[name].pruned for h in handles if name in h.config.tensors)
            writer.add(name, encode(delta, stored_dtype, dense=delta.nnz == delta.numel), pruned=pruned)
        for handle in handles:
            check_fingerprint(handle.config, samples.__getitem__, handle.ref, str(base))
        writer.close(
            merged_adapter_config(
                record,
                writer.records,
                fingerprint(samples),
                vocab_size=max((h.config.vocab_size or 0) for h in handles) or None,
            )
        )
    return SparseDeltaAdapter(out)


def replay(
    source: str | os.PathLike | MergeRecord,
    out: str | os.PathLike,
    *,
    output: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    token: str | bool | None = None,
    command: str | None = None,
    allow_unverified_base: bool = False,
) -> Path:
    """Run a recorded merge again (``dppa_merge.json``, a folder holding it, or a merged adapter) into ``out``.

    ``output`` ("model" or "adapter") defaults to what the record made. Hub inputs load at their recorded commits.
    """
    record = source if isinstance(source, MergeRecord) else read_record(source)
    output = output or record.output
    common = dict(
        weights=[a.weight for a in record.adapters],
        mode=record.mode,
        revision=record.base.replay_revision,
        adapter_revisions=[a.replay_revision for a in record.adapters],
        token=token,
        overwrite=overwrite,
        progress=progress,
        command=command or record.command,
        allow_unverified_base=allow_unverified_base,
        **record.params,
    )
    adapters = [a.ref for a in record.adapters]
    if output == "adapter":
        return merge_to_adapter(
            record.base.ref, adapters, out, value_dtype=record.value_dtype or "float32", **common
        ).directory
    if output == "model":
        return merge_to_folder(record.base.ref, adapters, out, dtype=record.dtype, **common)
    raise ValueError(f"unknown merge output {output!r}; choose 'model' or 'adapter'")


def _start(
    output: str,
    base: str | os.PathLike,
    revision: str | None,
    token: str | bool | None,
    command: str | None,
    merger: MergeMode,
    handles: Sequence[SparseDeltaAdapter],
    sources: list[MergeSource],
) -> tuple[Checkpoint, MergeRecord]:
    """Open the base checkpoint, check that every adapter fits its tensors (before any work), and start the record
    of a merge written to disk (``output``: "model" or "adapter")."""
    checkpoint = Checkpoint.open(base, revision=revision, token=token)
    shapes = {name: checkpoint.shape(name) for name in checkpoint.names()}
    for handle in handles:
        check_fits_base(handle.config, shapes, handle.ref, checkpoint.ref)
    record = MergeRecord(
        output=output,
        base=source_of(base, revision, checkpoint.directory),
        adapters=sources,
        mode=merger.name,
        params=asdict(merger.params),
        package_version=__version__,
        command=command,
        learned=merger.outcome(),
    )
    return checkpoint, record


def _grow_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero rows appended to an embedding whose adapter covers an extended vocabulary."""
    if tensor.shape[0] == rows:
        return tensor
    extra = torch.zeros((rows - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype)
    return torch.cat([tensor, extra])


def _copy_model_files(source: Path, target: Path, vocab_size: int, dtype: str | None) -> None:
    """Copy config, generation config and tokenizer files; grow ``vocab_size`` and set ``dtype`` in config.json."""
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(SKIPPED_FILES):
            shutil.copy2(path, target / path.name)
    config_path = target / "config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    if vocab_size and config.get("vocab_size", 0) < vocab_size:
        config["vocab_size"] = vocab_size
    if dtype:
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = dtype
    config_path.write_text(json.dumps(config, indent=2))
