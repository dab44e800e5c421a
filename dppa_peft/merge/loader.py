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
from ..format.validate import check_fits_base, require_fingerprint
from ..tuner.model import BaseModelMismatchError, check_base, resize_vocabulary
from ..checkpoint import HUB_PATTERNS, Checkpoint, ShardedWriter, atomic_directory, load_causal_lm, resolve_repo
from ..methods.base import SparseDelta
from ..pipeline import open_adapter
from ..validate import finite_numbers
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
    # flat and zero-extended: a normal adapter's delta covers the leading rows of a vocabulary-grown tensor
    dense = [torch.nn.functional.pad(d.to_dense().reshape(-1), (0, target.numel() - d.numel)) for d in deltas]
    return add_dense(target.detach(), combine(mode, dense, list(weights), **options))


def _prepare(adapters: Sequence[AdapterRef], weights: Sequence[float] | None, revisions: Sequence[str | None] | None,
             token: str | bool | None,
             allow_unverified_base: bool = False) -> tuple[list[SparseDeltaAdapter], list[float]]:
    if not adapters:
        raise ValueError("pass at least one adapter")
    weights = [1.0] * len(adapters) if weights is None else finite_numbers(weights, "--weight")
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters; pass one weight per adapter")
    revisions = list(revisions) if revisions else [None] * len(adapters)
    if len(revisions) != len(adapters):
        raise ValueError(f"got {len(revisions)} adapter revisions for {len(adapters)} adapters; pass one per adapter "
                         "('main' for the default branch)")
    handles = [open_adapter(a, revision=r, token=token) for a, r in zip(adapters, revisions)]
    for handle in handles:
        require_fingerprint(handle.config, handle.ref, allow_unverified_base)
    return handles, weights


def _tensor_names(adapters: Sequence[SparseDeltaAdapter]) -> list[str]:
    return sorted({name for a in adapters for name in a.config.tensors})


def _deltas_for(name: str, adapters: Sequence[SparseDeltaAdapter],
                weights: Sequence[float]) -> tuple[list[SparseDelta], list[float]]:
    chosen = [(a.sparse_tensor(name), w) for a, w in zip(adapters, weights) if name in a.config.tensors]
    return [d for d, _ in chosen], [w for _, w in chosen]


def load_merged(base: str | os.PathLike, adapters: Sequence[AdapterRef], weights: Sequence[float] | None = None,
                mode: str = "sum", *, revision: str | None = None, adapter_revisions: Sequence[str | None] | None = None,
                token: str | bool | None = None, dtype: str | torch.dtype = "auto", trust_remote_code: bool = False,
                progress: bool = True, allow_unverified_base: bool = False, **options: Any) -> torch.nn.Module:
    """Load ``base`` with transformers and merge every adapter into its weights in place; returns the model.

    ``base`` and every adapter may be a local folder or a Hub id (``revision`` / ``adapter_revisions`` pick the
    versions; the base is downloaded once into the HF cache, and ``model.name_or_path`` is that local folder).
    """
    handles, weights = _prepare(adapters, weights, adapter_revisions, token, allow_unverified_base)
    folder = resolve_repo(base, revision=revision, token=token,
                          allow_patterns=HUB_PATTERNS + ["*.py"] if trust_remote_code else None)
    model = load_causal_lm(folder, dtype=dtype, trust_remote_code=trust_remote_code)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for handle in handles:
        check_fits_base(handle.config, shapes, handle.ref, str(base))
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


def merge_to_folder(base: str | os.PathLike, adapters: Sequence[AdapterRef], out: str | os.PathLike,
                    weights: Sequence[float] | None = None, mode: str = "sum", *, revision: str | None = None,
                    adapter_revisions: Sequence[str | None] | None = None, token: str | bool | None = None,
                    dtype: torch.dtype | None = None, overwrite: bool = False, progress: bool = True,
                    max_shard_bytes: int = 4 << 30, allow_unverified_base: bool = False, **options: Any) -> Path:
    """Stream ``base`` tensor by tensor, add the combined deltas, and write a dense model folder to ``out``."""
    handles, weights = _prepare(adapters, weights, adapter_revisions, token, allow_unverified_base)
    checkpoint = Checkpoint.open(base, revision=revision, token=token)
    shapes = {name: checkpoint.shape(name) for name in checkpoint.names()}
    for handle in handles:
        check_fits_base(handle.config, shapes, handle.ref, checkpoint.ref)
    touched = set(_tensor_names(handles))
    samples: dict[str, bytes] = {}
    inputs = [base, checkpoint.directory, *(h.directory for h in handles)]
    with atomic_directory(out, overwrite=overwrite, inputs=inputs) as tmp:
        writer = ShardedWriter(tmp, max_shard_bytes=max_shard_bytes)
        for name in tqdm(checkpoint.names(), desc=f"merging ({mode})", unit="tensor", disable=not progress,
                         leave=False):
            tensor = checkpoint.read(name)
            if name in touched:
                samples[name] = tensor_sample(tensor)
            tensor = tensor if dtype is None else tensor.to(dtype)  # before adding: round once, to the output dtype
            if name in touched:
                deltas, used = _deltas_for(name, handles, weights)
                rows = max(d.shape[0] for d in deltas)  # any adapter may grow the vocabulary, in any order
                tensor = combine_tensor(_grow_rows(tensor, rows), deltas, used, mode, **options)
            writer.add(name, tensor)
        _verify_fingerprints(handles, samples, base)
        writer.close()
        _copy_model_files(checkpoint.directory, tmp, vocab_size=max((h.config.vocab_size or 0) for h in handles))
    return Path(out)


def _grow_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero rows appended to an embedding whose adapter covers an extended vocabulary."""
    if tensor.shape[0] == rows:
        return tensor
    extra = torch.zeros((rows - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype)
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
