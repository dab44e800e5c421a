"""``TensorRecord``: what ``adapter_config.json`` records about one stored tensor (``tensors[name]``).

The record's JSON keys are spelled only here: ``from_dict`` checks and reads one record (a ``UserError`` names the
tensor and the key at fault), ``to_dict`` writes exactly the JSON it read. Format versions 1 and 2 share the
record; version 2 adds the optional ``factors`` key. Keys other than the fields below are kept as they are
(``extra``), and an absent optional key stays absent (``None``; a JSON ``null`` reads as absent).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from ..core.errors import UserError

if TYPE_CHECKING:
    from .encoding import EncodedTensor

ENCODING_NAMES = ("dense", "bitmask", "gaps")
MAX_NUMEL = 1 << 48  # far above any real tensor; a larger recorded shape is a damaged or hostile config
DAMAGED = "the adapter is damaged or was edited: prune (or download) it again"
STORED_FORM = ("shape", "nnz", "encoding", "dtype", "index_bytes", "partition", "stored_bytes", "density", "factors")


@dataclass(frozen=True)
class TensorRecord:
    """One stored tensor: its stored form (computed from the encoded tensor by ``of``) and how it was made.

    Stored form: ``shape``, ``nnz`` (stored values), ``encoding`` (dense|bitmask|gaps), ``dtype`` (of the values),
    ``index_bytes``, ``partition`` (per-entry partition ids stored), ``stored_bytes``, ``density`` (kept fraction)
    and, format version 2, ``factors``: ``[P, R]`` of a stored float32 factor table (``kernel.weights``).
    How it was made: ``pruned`` (inside the pruning scope), ``block`` and ``module`` (its place in the scope),
    ``planned_density`` and ``unclipped_density`` (the method's plan), ``partition_densities`` (DPA: the density
    at each partition boundary). ``shape``, ``nnz`` and ``encoding`` are required; the rest may be absent (None).
    """

    shape: tuple[int, ...]
    nnz: int
    encoding: str
    dtype: str | None = None
    index_bytes: int | None = None  # None: not recorded (then checked against the stored index when decoded)
    partition: bool | None = None
    stored_bytes: int | None = None
    density: float | None = None
    factors: tuple[int, int] | None = None
    pruned: bool | None = None
    block: int | None = None
    module: str | None = None
    planned_density: float | None = None
    unclipped_density: float | None = None
    partition_densities: tuple[float, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, kept verbatim

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def of(cls, encoded: EncodedTensor, **described: Any) -> TensorRecord:
        """The record of ``encoded``: its stored form plus the ``described`` fields (``pruned``, ``block``, ...)."""
        return cls(**_stored_form(encoded), **described)

    def described(self) -> dict[str, Any]:
        """The fields that say how the tensor was made (and unknown keys): what ``of`` takes besides the tensor,
        to record the same tensor stored anew (e.g. amplified)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in STORED_FORM}

    @classmethod
    def from_dict(cls, name: str, data: Any, where: str = "adapter") -> TensorRecord:
        """Check and read the JSON record of tensor ``name`` (``where``: the adapter, for the error message)."""
        at = f"{where} tensor {name!r}"
        if not isinstance(data, dict):
            raise UserError(f"{at}: its record is not an object; {DAMAGED}")
        shape = data.get("shape")
        if not (
            isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape) and math.prod(shape) <= MAX_NUMEL
        ):
            raise UserError(f"{at} has an invalid shape {shape!r}; {DAMAGED}")
        numel, nnz, encoding = math.prod(shape), data.get("nnz"), data.get("encoding")
        if not _is_int(nnz) or not 0 <= nnz <= numel:
            raise UserError(f"{at} has nnz {nnz!r}, not a count between 0 and its {numel} entries; {DAMAGED}")
        if encoding not in ENCODING_NAMES:
            known = ", ".join(ENCODING_NAMES)
            raise UserError(f"{at} has an unknown encoding {encoding!r} (known: {known}); {DAMAGED}")
        if encoding == "dense" and nnz != numel:
            raise UserError(f"{at} is dense but records {nnz} of {numel} values; {DAMAGED}")
        factors = data.get("factors")
        if factors is not None and not (
            isinstance(factors, list) and len(factors) == 2 and all(_is_int(d) and d >= 1 for d in factors)
        ):
            raise UserError(f"{at} has an invalid factors table shape {factors!r} (expected [P, R]); {DAMAGED}")
        densities = _optional(data, "partition_densities", at, "a list of numbers", _is_numbers)
        return cls(
            shape=tuple(shape),
            nnz=nnz,
            encoding=encoding,
            dtype=_optional(data, "dtype", at, "a dtype name", lambda v: isinstance(v, str)),
            index_bytes=_optional(data, "index_bytes", at, "a byte count", _is_count),
            partition=_optional(data, "partition", at, "true or false", _is_bool),
            stored_bytes=_optional(data, "stored_bytes", at, "a byte count", _is_count),
            density=_optional(data, "density", at, "a number", _is_number),
            factors=None if factors is None else (factors[0], factors[1]),
            pruned=_optional(data, "pruned", at, "true or false", _is_bool),
            block=_optional(data, "block", at, "a block index", _is_count),
            module=_optional(data, "module", at, "a module name", lambda v: isinstance(v, str)),
            planned_density=_optional(data, "planned_density", at, "a number", _is_number),
            unclipped_density=_optional(data, "unclipped_density", at, "a number", _is_number),
            partition_densities=None if densities is None else tuple(densities),
            extra={k: v for k, v in data.items() if k not in _FIELDS},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (absent fields are left out, tuples become lists): what ``from_dict`` read."""
        out = dict(self.extra)
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def parts(self) -> dict[str, tuple[int, ...]]:
        """The parts this record needs in the weights file (values, index, partition, factors), with their shapes
        (``(-1,)`` for an index whose length is not recorded)."""
        parts: dict[str, tuple[int, ...]] = {"values": (self.nnz,)}
        if self.encoding != "dense":
            parts["index"] = (-1 if self.index_bytes is None else self.index_bytes,)
        if self.partition:
            parts["partition"] = (self.nnz,)
        if self.factors:
            parts["factors"] = self.factors
        return parts

    def require(self, name: str, key: str, why: str) -> Any:
        """The value of the optional field ``key``; a ``UserError`` naming tensor ``name`` when it is absent."""
        value = getattr(self, key)
        if value is None:
            raise UserError(f"tensor {name!r} records no {key!r}, which {why}; {DAMAGED}")
        return value


_FIELDS = tuple(f.name for f in dataclasses.fields(TensorRecord) if f.name != "extra")


def _stored_form(encoded: EncodedTensor) -> dict[str, Any]:
    return {
        "shape": tuple(encoded.shape),
        "nnz": encoded.nnz,
        "encoding": encoded.encoding,
        "dtype": str(encoded.values.dtype).removeprefix("torch."),
        "index_bytes": 0 if encoded.index is None else encoded.index.numel(),
        "partition": encoded.partition is not None,
        "stored_bytes": encoded.stored_bytes,
        "density": encoded.nnz / encoded.numel if encoded.numel else 0.0,
        "factors": None if encoded.factors is None else (encoded.factors.shape[0], encoded.factors.shape[1]),
    }


def _optional(data: dict[str, Any], key: str, at: str, expected: str, valid: Callable[[Any], bool]) -> Any:
    value = data.get(key)
    if value is not None and not valid(value):
        raise UserError(f"{at} has {key} {value!r}, not {expected}; {DAMAGED}")
    return value


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_numbers(value: Any) -> bool:
    return isinstance(value, list) and all(_is_number(v) for v in value)
