"""Load a base model plus N sparse delta adapters as one merged model: ``W = W_B + combine(w_i, δ_i)``.

The default combine mode, ``sum``, adds ``w_i·δ_i`` straight from the sparse form (no dense delta per adapter);
election modes (TIES, ...) densify one tensor at a time. ``merge_to_folder`` streams the base checkpoint tensor by
tensor into a new model folder that ``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..format.apply import add_dense, add_sparse
from ..format.fingerprint import fingerprint, tensor_sample
from ..format.io import SparseDeltaAdapter
from ..tuner.model import BaseModelMismatchError, check_base, resize_vocabulary
from ..checkpoint import HUB_PATTERNS, Checkpoint, ShardedWriter, atomic_directory, resolve_repo
from ..methods.base import SparseDelta
from ..pipeline import open_adapter
from ..specs import MergeSpec, UserError, torch_dtype
from .combine import combine

SPARSE_MODES = ("sum",)
SKIPPED_FILES = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth", ".msgpack", ".h5", "README.md",
                 ".gitattributes")

AdapterRef = str | os.PathLike | SparseDeltaAdapter


def combine_tensor(target: torch.Tensor, deltas: Sequence[SparseDelta], weights: Sequence[float],
                   mode: str = "sum", **options: Any) -> torch.Tensor:
    """``target + combine(mode, w, δ)`` for one tensor, computed in fp32 and returned in ``target``'s dtype
    (the kernel of ``format.apply``: the same bits as the PEFT layer's merge for the ``sum`` mode)."""
    if mode in SPARSE_MODES:
        return add_sparse(target.detach(), deltas, weights)
    return add_dense(target.detach(), combine(mode, [d.to_dense() for d in deltas], list(weights), **options))


def _prepare(adapters: Sequence[AdapterRef], weights: Sequence[float] | None, revisions: Sequence[str | None] | None,
             token: str | bool | None) -> tuple[list[SparseDeltaAdapter], list[float]]:
    if not adapters:
        raise ValueError("pass at least one adapter")
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters; pass one weight per adapter")
    revisions = list(revisions) if revisions else [None] * len(adapters)
    if len(revisions) != len(adapters):
        raise ValueError(f"got {len(revisions)} adapter revisions for {len(adapters)} adapters; pass one per adapter "
                         "('main' for the default branch)")
    return [open_adapter(a, revision=r, token=token) for a, r in zip(adapters, revisions)], weights


def _tensor_names(adapters: Sequence[SparseDeltaAdapter]) -> list[str]:
    return sorted({name for a in adapters for name in a.config.tensors})


def _deltas_for(name: str, adapters: Sequence[SparseDeltaAdapter],
                weights: Sequence[float]) -> tuple[list[SparseDelta], list[float]]:
    chosen = [(a.sparse_tensor(name), w) for a, w in zip(adapters, weights) if name in a.config.tensors]
    return [d for d, _ in chosen], [w for _, w in chosen]


def load_merged(base: str | os.PathLike, adapters: Sequence[AdapterRef], weights: Sequence[float] | None = None,
                mode: str = "sum", *, revision: str | None = None, adapter_revisions: Sequence[str | None] | None = None,
                token: str | bool | None = None, dtype: str | torch.dtype = "auto", trust_remote_code: bool = False,
                progress: bool = True, **options: Any) -> torch.nn.Module:
    """Load ``base`` with transformers and merge every adapter into its weights in place; returns the model.

    ``base`` and every adapter may be a local folder or a Hub id (``revision`` / ``adapter_revisions`` pick the
    versions; the base is downloaded once into the HF cache, and ``model.name_or_path`` is that local folder).
    """
    from transformers import AutoModelForCausalLM

    handles, weights = _prepare(adapters, weights, adapter_revisions, token)
    folder = resolve_repo(base, revision=revision, token=token,
                          allow_patterns=HUB_PATTERNS + ["*.py"] if trust_remote_code else None)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code)
    for handle in handles:
        check_base(model, handle.config)
    resize_vocabulary(model, max((h.config.vocab_size or 0 for h in handles), default=0) or None)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in tqdm(_tensor_names(handles), desc=f"merging ({mode})", unit="tensor", disable=not progress,
                         leave=False):
            if name not in params:
                raise ValueError(f"adapter tensor {name!r} is not a parameter of {base}; the adapter does not fit")
            deltas, used = _deltas_for(name, handles, weights)
            params[name].copy_(combine_tensor(params[name], deltas, used, mode, **options))
    return model


def merge_to_folder(spec: MergeSpec | str | os.PathLike, adapters: Sequence[AdapterRef] | None = None,
                    out: str | os.PathLike | None = None, weights: Sequence[float] | None = None,
                    mode: str | None = None, *, token: str | bool | None = None, progress: bool = True,
                    max_shard_bytes: int = 4 << 30, **options: Any) -> Path:
    """Stream the base tensor by tensor, add the combined deltas, and write a dense model folder.

    Pass a :class:`~dppa_peft.specs.MergeSpec`, or its keyword form ``merge_to_folder(base, adapters, out,
    weights=None, mode="sum", revision=None, adapter_revisions=None, dtype="auto", overwrite=False, **mode_options)``.
    """
    given = {k: v for k, v in (("weights", weights), ("mode", mode)) if v is not None}
    if not isinstance(spec, MergeSpec):
        spec = MergeSpec.build(spec, adapters or [], out, **given, **options)
    elif adapters is not None or out is not None or given or options:
        raise UserError("pass either a MergeSpec or base, adapters, out and options, not both")
    base, out, mode, options = spec.base.ref, spec.out, spec.mode, spec.mode_options()
    dtype = torch_dtype(spec.dtype)
    handles, weights = _prepare(spec.adapters, spec.weights, None, token)
    checkpoint = Checkpoint.open(base, revision=spec.base.revision, token=token)
    touched = set(_tensor_names(handles))
    missing = sorted(touched - set(checkpoint.names()))
    if missing:
        raise ValueError(f"adapter tensors {missing[:5]} are not in {base}; the adapters do not fit this base")
    samples: dict[str, bytes] = {}
    with atomic_directory(out, overwrite=spec.overwrite) as tmp:
        writer = ShardedWriter(tmp, max_shard_bytes=max_shard_bytes)
        for name in tqdm(checkpoint.names(), desc=f"merging ({mode})", unit="tensor", disable=not progress,
                         leave=False):
            tensor = checkpoint.read(name)
            if name in touched:
                samples[name] = tensor_sample(tensor)
                deltas, used = _deltas_for(name, handles, weights)
                tensor = combine_tensor(_grow_rows(tensor, deltas[0].shape), deltas, used, mode, **options)
            writer.add(name, tensor if dtype is None else tensor.to(dtype))
        _verify_fingerprints(handles, samples, base)
        writer.close()
        _copy_model_files(checkpoint.directory, tmp, vocab_size=max((h.config.vocab_size or 0) for h in handles))
    return Path(out)


def _grow_rows(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero rows appended to an embedding whose adapter covers an extended vocabulary."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    extra = torch.zeros((shape[0] - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype)
    return torch.cat([tensor, extra])


def _verify_fingerprints(handles: Sequence[SparseDeltaAdapter], samples: dict[str, bytes], base: Any) -> None:
    for handle in handles:
        expected = handle.config.base_fingerprint
        if expected and fingerprint({n: samples[n] for n in handle.config.tensors}) != expected:
            raise BaseModelMismatchError(
                f"adapter {handle.ref} was made from base {handle.config.base_model_name_or_path!r}, not {str(base)!r}"
                " (fingerprint mismatch); merge it onto the base model it was pruned from"
            )


def _copy_model_files(source: Path, target: Path, vocab_size: int) -> None:
    """Copy config, generation config and tokenizer files; grow config.vocab_size when the vocabulary grew."""
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(SKIPPED_FILES):
            shutil.copy2(path, target / path.name)
    config_path = target / "config.json"
    if vocab_size and config_path.is_file():
        config = json.loads(config_path.read_text())
        if config.get("vocab_size", 0) < vocab_size:
            config["vocab_size"] = vocab_size
            config_path.write_text(json.dumps(config, indent=2))
