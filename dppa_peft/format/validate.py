"""Does an adapter fit a base? Recorded shapes against the base's tensors, the vocabulary size, the fingerprint.

Every path that applies an adapter to a base (merge to a folder, load merged, PEFT loading, export, amplify) calls
``check_fits_base`` before any work, so a wrong shape is one clear ``UserError`` instead of a zero-padded or
truncated result.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UserError
from .config import SparseDeltaConfig

VOCAB_FIX = "the adapter was made for another base (or its config was edited): use the base it was pruned from"


def check_fits_base(config: SparseDeltaConfig, base_shapes: Mapping[str, tuple[int, ...]], adapter: str,
                    base: str, allow_fewer_rows: bool = False) -> None:
    """Every recorded tensor exists in the base with the same shape, except embedding rows grown to
    ``vocab_size`` (the adapter then stores the new rows whole). ``allow_fewer_rows``: the base's vocabulary may
    already have been grown by another loaded adapter, so a tensor may record fewer rows than it has now."""
    missing = sorted(set(config.tensors) - set(base_shapes))
    if missing:
        raise UserError(f"adapter {adapter} changes tensors {missing[:5]} that {base} does not have; the adapter "
                        "does not fit this base: pass the base it was pruned from")
    for name, record in sorted(config.tensors.items()):
        shape, found = tuple(record["shape"]), tuple(base_shapes[name])
        if shape == found:
            continue
        grown = len(shape) == len(found) >= 1 and shape[1:] == found[1:] and shape[0] > found[0]
        if allow_fewer_rows and len(shape) == len(found) >= 1 and shape[1:] == found[1:] and shape[0] < found[0]:
            continue
        if not grown:
            raise UserError(f"adapter {adapter} records tensor {name!r} with shape {list(shape)}, but {base} has "
                            f"{list(found)}; the adapter does not fit this base: pass the base it was pruned from")
        if config.vocab_size != shape[0]:
            raise UserError(f"adapter {adapter} records tensor {name!r} with {shape[0]} rows for {found[0]} in "
                            f"{base}, but its vocab_size is {config.vocab_size}; {VOCAB_FIX}")
    if config.vocab_size is not None:
        rows = {tuple(r["shape"])[0] for r in config.tensors.values() if r["shape"]}
        if config.vocab_size not in rows:
            raise UserError(f"adapter {adapter} sets vocab_size {config.vocab_size}, but none of its tensors has that "
                            f"many rows (largest {max(rows, default=0)}); {VOCAB_FIX}")


def require_fingerprint(config: SparseDeltaConfig, adapter: str, allow_unverified: bool) -> None:
    """Refuse to merge an adapter that records no base fingerprint, unless the caller opted out explicitly."""
    if config.base_fingerprint or allow_unverified:
        return
    raise UserError(f"adapter {adapter} records no base fingerprint (base_fingerprint is null), so nothing checks "
                    "that it is merged onto the right base; re-prune it with dppa-peft, or pass "
                    "--allow-unverified-base (allow_unverified_base=True) if you are sure of the base")
