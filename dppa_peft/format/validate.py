"""Is an adapter intact, and does it fit a base? One validator per concern, each raising a clear ``UserError``.

- ``read_adapter_config`` / ``check_config``: the config file (JSON object, peft_type, records, factors, vocab);
- ``check_stored_parts``: the weights file holds every part each record needs, with the recorded lengths;
- ``check_encoded``: one tensor's content (finite values, index inside the shape with ``nnz`` positions, partition
  ids with a factor), when it is decoded;
- ``check_fits_base``: recorded shapes against the base's tensors and the vocabulary size, called by every path
  that applies an adapter to a base (merge to a folder, load merged, PEFT loading, export, amplify) before work;
- ``require_fingerprint``: merging needs a recorded base fingerprint unless the caller opts out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UserError
from ..io.safetensors_file import TensorEntry
from ..core.validate import check_finite, finite_number, finite_numbers, read_json
from .config import SparseDeltaConfig, SparseDeltaType
from .encoding import EncodedTensor
from .record import DAMAGED, TensorRecord

VOCAB_FIX = "the adapter was made for another base (or its config was edited): use the base it was pruned from"


def check_fits_base(
    config: SparseDeltaConfig,
    base_shapes: Mapping[str, tuple[int, ...]],
    adapter: str,
    base: str,
    allow_fewer_rows: bool = False,
) -> None:
    """Every recorded tensor exists in the base with the same shape, except embedding rows grown to
    ``vocab_size`` (the adapter then stores the new rows whole). ``allow_fewer_rows``: the base's vocabulary may
    already have been grown by another loaded adapter, so a tensor may record fewer rows than it has now."""
    missing = sorted(set(config.tensors) - set(base_shapes))
    if missing:
        raise UserError(
            f"adapter {adapter} changes tensors {missing[:5]} that {base} does not have; the adapter "
            "does not fit this base: pass the base it was pruned from"
        )
    for name, record in sorted(config.tensors.items()):
        shape, found = record.shape, tuple(base_shapes[name])
        if shape == found:
            continue
        grown = len(shape) == len(found) >= 1 and shape[1:] == found[1:] and shape[0] > found[0]
        if allow_fewer_rows and len(shape) == len(found) >= 1 and shape[1:] == found[1:] and shape[0] < found[0]:
            continue
        if not grown:
            raise UserError(
                f"adapter {adapter} records tensor {name!r} with shape {list(shape)}, but {base} has "
                f"{list(found)}; the adapter does not fit this base: pass the base it was pruned from"
            )
        if config.vocab_size != shape[0]:
            raise UserError(
                f"adapter {adapter} records tensor {name!r} with {shape[0]} rows for {found[0]} in "
                f"{base}, but its vocab_size is {config.vocab_size}; {VOCAB_FIX}"
            )
    if config.vocab_size is not None:
        rows = {r.shape[0] for r in config.tensors.values() if r.shape}
        if config.vocab_size not in rows:
            raise UserError(
                f"adapter {adapter} sets vocab_size {config.vocab_size}, but none of its tensors has that "
                f"many rows (largest {max(rows, default=0)}); {VOCAB_FIX}"
            )


def require_fingerprint(config: SparseDeltaConfig, adapter: str, allow_unverified: bool) -> None:
    """Refuse to merge an adapter that records no base fingerprint, unless the caller opted out explicitly."""
    if config.base_fingerprint or allow_unverified:
        return
    raise UserError(
        f"adapter {adapter} records no base fingerprint (base_fingerprint is null), so nothing checks "
        "that it is merged onto the right base; re-prune it with dppa-peft, or pass "
        "--allow-unverified-base (allow_unverified_base=True) if you are sure of the base"
    )


# --- integrity of an adapter folder: its config, the stored parts, the decoded content ---------------------------


def read_adapter_config(path: Path, ref: str) -> SparseDeltaConfig:
    """Load ``adapter_config.json`` with every check that needs no weights: a JSON object, our PEFT type, and
    well-formed tensor records, factors and vocabulary size."""
    data = read_json(path, "adapter config")
    peft_type = data.get("peft_type")
    if peft_type != SparseDeltaType.SPARSE_DELTA.value:
        known = (
            f"a PEFT {peft_type}"
            if isinstance(peft_type, str) and peft_type in _peft_types()
            else f"an unknown peft_type {peft_type!r}"
        )
        raise UserError(
            f"{path} describes {known} adapter, not a dppa-peft sparse delta adapter (peft_type "
            "SPARSE_DELTA); load it with PEFT itself, or pass an adapter written by `dppa-peft prune`"
        )
    check_config(data, ref)
    try:
        return SparseDeltaConfig.from_pretrained(str(path.parent))
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # PEFT's own parsing of the fields
        raise UserError(
            f"{path} cannot be read as a sparse delta adapter config ({type(err).__name__}: {err}); {DAMAGED}"
        ) from None


def _peft_types() -> set[str]:
    from peft.utils import PeftType

    return {t.value for t in PeftType}


CHECKED_FIELDS = ("tensors", "amplification", "vocab_size", "base_fingerprint")


def check_config(data: dict[str, Any], ref: str) -> None:
    """The fields of a parsed adapter config: well-formed records (shape, nnz, encoding, factors table), finite
    factors, a plausible vocab_size and fingerprint (checked before PEFT builds the config object from them)."""
    tensors = data.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise UserError(f"adapter {ref} records no tensors ('tensors' is empty or not an object); {DAMAGED}")
    for name, record in tensors.items():
        if not isinstance(record, TensorRecord):  # a config object's records are checked already
            TensorRecord.from_dict(name, record, f"adapter {ref}")
    if not isinstance(data.get("base_fingerprint"), (str, type(None))):
        raise UserError(f"adapter {ref} has an invalid base_fingerprint {data['base_fingerprint']!r}; {DAMAGED}")
    amplification = data.get("amplification")
    if amplification is not None:
        if (
            not isinstance(amplification, dict)
            or not isinstance(amplification.get("factors"), list)
            or not amplification["factors"]
            or not isinstance(amplification.get("raw_factors", []), list)
        ):
            raise UserError(f"adapter {ref}: 'amplification' lacks its lists of 'factors' / 'raw_factors'; {DAMAGED}")
        finite_numbers(amplification["factors"], f"adapter {ref} amplification.factors")
        finite_numbers(amplification.get("raw_factors"), f"adapter {ref} amplification.raw_factors")
        finite_number(amplification.get("unpruned_factor", 1.0), f"adapter {ref} amplification.unpruned_factor")
    size = data.get("vocab_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise UserError(f"adapter {ref} has an invalid vocab_size {size!r}; {DAMAGED}")


def check_stored_parts(
    config: SparseDeltaConfig, header: Mapping[str, TensorEntry], key: Callable[[str, str], str], weights: Path
) -> None:
    """Every part each record needs is in the weights file, with the recorded length (checked from the header)."""
    for name, record in config.tensors.items():
        for part, shape in record.parts().items():
            entry = header.get(key(name, part))
            if entry is None:
                raise UserError(f"{weights} lacks {key(name, part)!r}, the {part} of tensor {name!r}; {DAMAGED}")
            if part == "index" and record.index_bytes is None:
                shape = entry.shape  # records without index_bytes: checked when decoded
            if entry.shape != shape:
                raise UserError(
                    f"{weights}: the {part} of tensor {name!r} has shape {list(entry.shape)}, but the "
                    f"config records {list(shape)}; {DAMAGED}"
                )
            if part == "values" and not entry.dtype.is_floating_point:
                raise UserError(
                    f"{weights}: the values of tensor {name!r} are {entry.dtype}, not floating point; {DAMAGED}"
                )
            if part in ("index", "partition") and entry.dtype != torch.uint8:
                raise UserError(f"{weights}: the {part} of tensor {name!r} is {entry.dtype}, not uint8; {DAMAGED}")


def check_encoded(name: str, encoded: EncodedTensor, factor_count: int, ref: str) -> torch.Tensor | None:
    """Check one stored tensor's content and return its decoded flat indices (None for a dense tensor: every
    position, in order, never materialised): finite values (and factors), the index decoding to exactly ``nnz``
    ascending positions inside the shape, partition ids below ``factor_count``."""
    where = f"adapter {ref} tensor {name!r}"
    check_finite(encoded.values, name, f"adapter {ref}", DAMAGED)
    if encoded.factors is not None:
        check_finite(encoded.factors, f"{name} (factors)", f"adapter {ref}", DAMAGED)
    index_bytes = 0 if encoded.index is None else encoded.index.numel()
    if encoded.encoding == "bitmask" and index_bytes != -(-encoded.numel // 8):
        raise UserError(
            f"{where}: its bitmask has {index_bytes} bytes for {encoded.numel} entries "
            f"(needs {-(-encoded.numel // 8)}); {DAMAGED}"
        )
    indices = None if encoded.encoding == "dense" else encoded.indices()
    if indices is None and encoded.nnz != encoded.numel:
        raise UserError(f"{where}: stored dense with {encoded.nnz} values for {encoded.numel} entries; {DAMAGED}")
    if indices is not None and indices.numel() != encoded.nnz:
        raise UserError(
            f"{where}: the index holds {indices.numel()} positions but {encoded.nnz} values are stored; {DAMAGED}"
        )
    if indices is not None and indices.numel() and int(indices[-1]) >= encoded.numel:
        raise UserError(
            f"{where}: the index reaches position {int(indices[-1])}, outside its {encoded.numel} "
            f"entries (shape {list(encoded.shape)}); {DAMAGED}"
        )
    partitions = 1 if encoded.partition is None or not encoded.partition.numel() else int(encoded.partition.max()) + 1
    if encoded.partition is None and factor_count != 1 or partitions > factor_count:
        stored = "no partition ids" if encoded.partition is None else f"partition id {partitions - 1}"
        raise UserError(f"{where}: {stored} for the {factor_count} amplification factors in the config; {DAMAGED}")
    if encoded.factors is not None:
        rows = encoded.shape[0] if len(encoded.shape) >= 2 else 1
        if encoded.factors.shape[0] < partitions or encoded.factors.shape[1] not in (1, rows):
            raise UserError(
                f"{where}: its factors table is {list(encoded.factors.shape)}, but it needs at least "
                f"{partitions} partitions and 1 or {rows} rows; {DAMAGED}"
            )
    return indices
