"""Export a sparse delta adapter to PEFT's built-in SUPERTUNING format, which stock PEFT loads without dppa-peft.

SUPERTUNING stores, per targeted ``nn.Linear``, fp32 ``supertuning_values`` and int32 flat ``supertuning_indices``
of ``k = int(numel · (1 − sparsity))`` entries, with ONE sparsity for all modules. The export picks the sparsity
so that every targeted module's kept entries fit, fills the rest of each module's ``k`` with zero values at unused
positions (they add nothing), and bakes the DPA factors into the values. Changed tensors that SUPERTUNING cannot
hold (embeddings, norms, biases, dense-stored linears, linears above 2^31 entries, which int32 indices cannot address,
and linears so much denser than the rest that padding all the others would cost more) go into ``modules_to_save``:
the whole module, base + delta (``kernel.weights``), so the export needs the base checkpoint. Stock PEFT casts the
values to the base dtype and adds them in it, so for a bf16/fp16 base the values are baked as ``kernel(base + δ) −
base`` (exact in fp32): loaded on that base, the merged weights equal ``load_merged``'s bit for bit in fp32; in
bf16/fp16 too except where a delta cancels most of its base weight (sign change), where no value in the base dtype
makes stock PEFT's rounding land on the kernel's weight: those entries are off by the base-dtype rounding of their
delta, and the export counts them (``SupertuningExport.inexact``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from ..core.progress import progress_bar

from ..io.checkpoint import Checkpoint, SafetensorsWriter
from ..core.output import atomic_directory, check_output
from .card import write_model_card
from .stock import SupertuningExport
from ..kernel.weights import adapter_delta, add_dense, add_sparse
from ..format.fingerprint import check_fingerprint
from ..io.models import model_skeleton
from ..io.sampling import checkpoint_sample
from ..format.io import WEIGHTS_FILE, AdapterFolder
from ..format.validate import check_fits_base
from ..methods.base import SparseDelta

PREFIX = "base_model.model."
SPARSE_ENTRY_BYTES = 8  # fp32 value + int32 index
MAX_SPARSE_NUMEL = 2**31  # int32 flat indices address positions 0 .. 2^31 - 1; larger modules are stored whole


def export_supertuning(
    adapter: AdapterFolder,
    out: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    base_revision: str | None = None,
    token: str | bool | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SupertuningExport:
    """Write ``adapter`` as a stock-PEFT SUPERTUNING adapter folder ``out`` (config, weights, card).

    ``base`` (folder or Hub id) defaults to the base recorded in the adapter; it must be the base the adapter was
    pruned from (checked by fingerprint). ``repo_id`` only names the adapter in the card's usage snippet.
    """
    from peft import SupertuningConfig

    config = adapter.config
    if config.vocab_size:
        raise ValueError(
            f"{adapter.ref} grows the vocabulary to {config.vocab_size} tokens; stock PEFT does not "
            "resize the base embeddings, so it cannot be exported to SUPERTUNING: use the sparse-delta "
            "format"
        )
    if base is None:
        base, base_revision = adapter.base_ref, base_revision or config.revision
    checkpoint = Checkpoint.open(base, revision=base_revision, token=token)
    inputs = [adapter.directory, base, checkpoint.directory]
    check_output(out, inputs, overwrite)  # before the fingerprint read
    _check_base(adapter, checkpoint)
    model = model_skeleton(checkpoint)
    targets, whole = _split_modules(adapter, checkpoint, model)
    sparsity = global_sparsity([(_numel(adapter, t), adapter.config.tensors[f"{t}.weight"].nnz) for t in targets])
    kept = padding = inexact = 0
    with atomic_directory(out, overwrite=overwrite, inputs=inputs) as tmp:
        writer = SafetensorsWriter(tmp / WEIGHTS_FILE)
        for module in progress_bar(targets, desc="export (sparse)", unit="module", disable=not progress):
            delta, off = _baked(adapter, checkpoint, f"{module}.weight")
            values, indices, pad = _padded_support(delta, sparsity)
            inexact += off
            writer.add(f"{PREFIX}{module}.supertuning_values", values)
            writer.add(f"{PREFIX}{module}.supertuning_indices", indices)
            kept, padding = kept + values.numel() - pad, padding + pad
        for module in progress_bar(whole, desc="export (whole)", unit="module", disable=not progress):
            for key, tensor in _whole_module(adapter, checkpoint, model, module).items():
                writer.add(f"{PREFIX}{module}.{key}", tensor)
        writer.close()
        peft_config = SupertuningConfig(
            target_modules=targets,
            modules_to_save=whole or None,
            sparsity=sparsity,
            save_precomputed_indices=True,
            base_model_name_or_path=config.base_model_name_or_path,
            revision=config.revision,
            task_type=config.task_type or "CAUSAL_LM",
            inference_mode=True,
        )
        peft_config.save_pretrained(str(tmp))
        summary = SupertuningExport(
            Path(out),
            sparsity,
            targets,
            whole,
            kept,
            padding,
            (tmp / WEIGHTS_FILE).stat().st_size,
            adapter.nbytes,
            inexact,
        )
        write_model_card(tmp, config, repo_id=repo_id, stock=summary)
    return summary


def global_sparsity(modules: list[tuple[int, int]]) -> float:
    """The largest sparsity ``s`` with ``int(numel · (1 − s)) >= nnz`` for every (numel, nnz), as PEFT computes k."""
    if not modules:
        raise ValueError("no sparse Linear delta to export: SUPERTUNING needs at least one targeted Linear module")
    density = max(max(nnz, 1) / numel for numel, nnz in modules)
    sparsity = max(0.0, 1.0 - density)
    while sparsity > 0.0 and any(int(numel * (1 - sparsity)) < max(nnz, 1) for numel, nnz in modules):
        sparsity = max(0.0, math.nextafter(sparsity, -math.inf))
    return sparsity


def choose_targets(candidates: dict[str, tuple[int, int, int]]) -> list[str]:
    """Which sparse Linear modules to store sparsely: the set whose padded size plus whole-module storage of the rest
    is smallest. ``candidates`` maps a module to (numel, nnz, bytes to store it whole)."""
    best: tuple[int, list[str]] | None = None
    for limit in sorted({nnz / numel for numel, nnz, _ in candidates.values()}):
        chosen = sorted(m for m, (numel, nnz, _) in candidates.items() if nnz / numel <= limit)
        sparsity = global_sparsity([candidates[m][:2] for m in chosen])
        cost = sum(int(candidates[m][0] * (1 - sparsity)) * SPARSE_ENTRY_BYTES for m in chosen)
        cost += sum(whole for m, (_, _, whole) in candidates.items() if m not in chosen)
        if best is None or cost < best[0]:
            best = (cost, chosen)
    return best[1] if best else []


def _check_base(adapter: AdapterFolder, checkpoint: Checkpoint) -> None:
    """The adapter fits the base checkpoint and was pruned from it (its recorded fingerprint)."""
    check_fits_base(adapter.config, {n: checkpoint.shape(n) for n in checkpoint.names()}, adapter.ref, checkpoint.ref)
    check_fingerprint(adapter.config, lambda name: checkpoint_sample(checkpoint, name), adapter.ref, checkpoint.ref)


def _numel(adapter: AdapterFolder, module: str) -> int:
    return adapter.config.tensors[f"{module}.weight"].numel


def _split_modules(
    adapter: AdapterFolder, checkpoint: Checkpoint, model: torch.nn.Module
) -> tuple[list[str], list[str]]:
    """(sparse SUPERTUNING targets, whole modules for ``modules_to_save``), both checked against PEFT's matching."""
    modules = dict(model.named_modules())
    changed = sorted(adapter.config.module_names)
    candidates = {}
    for name in changed:
        records = adapter.config.records_for_module(name)
        if name not in modules:
            raise ValueError(f"adapter module {name!r} is not in the base architecture; the adapter does not fit it")
        numel = _numel(adapter, name) if "weight" in records else 0
        if (
            isinstance(modules[name], torch.nn.Linear)
            and set(records) == {"weight"}
            and records["weight"].encoding != "dense"
            and numel <= MAX_SPARSE_NUMEL
        ):
            candidates[name] = (numel, records["weight"].nnz, numel * checkpoint.dtype(f"{name}.weight").itemsize)
    targets = choose_targets(candidates)
    whole = [name for name in changed if name not in targets]
    _check_unambiguous(model, targets, whole)
    return targets, whole


def _check_unambiguous(model: torch.nn.Module, targets: list[str], whole: list[str]) -> None:
    """PEFT matches targets by '.'-suffix and modules_to_save by plain suffix: each name must hit one module only,
    and a whole module must not share a parameter with another module (tied embeddings would come apart)."""
    names = [n for n, _ in model.named_modules(remove_duplicate=False)]
    for name in targets:
        if [n for n in names if n == name or n.endswith("." + name)] != [name]:
            raise ValueError(f"module name {name!r} matches several modules; it cannot be a SUPERTUNING target")
    owners: dict[int, list[str]] = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(pname)
    for name in whole:
        if [n for n in names if n.endswith(name)] != [name]:
            raise ValueError(f"module name {name!r} matches several modules; it cannot go in modules_to_save")
        for pname, param in model.get_submodule(name).named_parameters(prefix=name):
            if len(owners[id(param)]) > 1:
                raise ValueError(
                    f"{pname} is tied to {sorted(set(owners[id(param)]) - {pname})}; stock PEFT's "
                    "modules_to_save would untie them, so this adapter cannot be exported to SUPERTUNING: "
                    "use the sparse-delta format"
                )


def _baked(adapter: AdapterFolder, checkpoint: Checkpoint, name: str) -> tuple[SparseDelta, int]:
    """The effective delta (every factor applied) as values that stock PEFT, which casts them to the base dtype and
    adds them in it, turns into the kernel's weights: the values themselves for an fp32 base; for a bf16/fp16 base
    ``kernel(base + δ) − base``, or the neighbouring base-dtype number that rounds to the same weight. Also returns
    how many entries no base-dtype value reproduces (they are off by the base-dtype rounding of their delta)."""
    delta = adapter_delta(adapter, name)
    dtype = checkpoint.dtype(name)
    if dtype == torch.float32:
        return delta, 0
    base = checkpoint.read(name).reshape(-1)[delta.indices]
    target = add_dense(base, delta.values)
    values = target.float() - base.float()
    exact = base + values.to(dtype) == target
    for step in (1, -1):  # one unit in the last place of the base dtype, away from / towards zero
        neighbour = (values.to(dtype).view(torch.int16) + step).view(dtype).float()
        hit = ~exact & (values != 0) & (base + neighbour.to(dtype) == target)
        values, exact = torch.where(hit, neighbour, values), exact | hit
    return SparseDelta(delta.indices, values, delta.shape), int((~exact).sum())


def _padded_support(delta: SparseDelta, sparsity: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """fp32 values and int32 indices of one module's delta, zero-padded to PEFT's k at unused positions."""
    numel = math.prod(delta.shape)
    pad = int(numel * (1 - sparsity)) - delta.nnz
    used = torch.zeros(numel, dtype=torch.bool)
    used[delta.indices] = True
    free = (~used).nonzero().reshape(-1)[:pad]
    indices = torch.cat([delta.indices.long(), free]).to(torch.int32)
    values = torch.cat([delta.values.float(), torch.zeros(pad)])
    return values, indices, pad


def _whole_module(
    adapter: AdapterFolder, checkpoint: Checkpoint, model: torch.nn.Module, module: str
) -> dict[str, torch.Tensor]:
    """Every state entry of one module, base + delta added by the kernel (as our tuner layer does)."""
    out = {}
    for key in model.get_submodule(module).state_dict():
        name = f"{module}.{key}"
        if name not in checkpoint:
            raise ValueError(f"{name} is not in {checkpoint.ref}; cannot store module {module!r} whole")
        tensor = checkpoint.read(name)
        if name in adapter.config.tensors:
            tensor = add_sparse(tensor, [adapter_delta(adapter, name)])
        out[key] = tensor
    return out
