"""Read a safetensors file's header ourselves and check it before ``safetensors.safe_open`` maps the file.

A truncated file, a garbled or oversized header, bad data offsets, an empty file or a dtype we do not read (float8,
unsigned 16/32/64-bit) each become one ``UserError`` naming the file (and the tensor) instead of a Rust panic, an
``OverflowError`` or a wrong read. The header also gives every tensor's shape and dtype without opening the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .errors import UserError

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_TO_ST = {v: k for k, v in ST_DTYPES.items()}
FIX = "the file is damaged or not a safetensors file: re-download or re-save it"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _fail(path: Path, problem: str, fix: str = FIX) -> UserError:
    return UserError(f"{path}: {problem}; {fix}")


def read_header(path: str | os.PathLike) -> dict[str, TensorEntry]:
    """The checked tensor table of a safetensors file (name -> shape, dtype)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise _fail(path, f"only {size} bytes (empty or truncated)")
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise _fail(path, f"header length {length} exceeds the file size {size} (truncated or garbled)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(path, f"the header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise _fail(path, "the header is not a JSON object")
    data_bytes = size - 8 - length
    entries = {name: _entry(path, name, spec, data_bytes) for name, spec in header.items() if name != "__metadata__"}
    _check_layout(path, header, data_bytes)
    return entries


def _entry(path: Path, name: str, spec: Any, data_bytes: int) -> TensorEntry:
    if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= set(spec):
        raise _fail(path, f"tensor {name!r} has a malformed header entry {str(spec)[:80]}")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in ST_DTYPES:
        if isinstance(dtype, str) and dtype.startswith("F8"):
            raise _fail(path, f"tensor {name!r} is stored as {dtype} (float8), which dppa-peft does not read",
                        "save the checkpoint in bfloat16, float16 or float32 (e.g. dequantize it) first")
        raise _fail(path, f"tensor {name!r} has dtype {dtype!r}, which dppa-peft does not read",
                    f"use one of {sorted(ST_DTYPES)}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _fail(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes):
        raise _fail(path, f"tensor {name!r} has data offsets {offsets!r} outside the {data_bytes} data bytes "
                          "(truncated file or bad offsets)")
    expected = math.prod(shape) * ST_DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != expected:
        raise _fail(path, f"tensor {name!r} of shape {shape} ({dtype}) needs {expected} bytes but its data offsets "
                          f"span {offsets[1] - offsets[0]}")
    return TensorEntry(tuple(shape), ST_DTYPES[dtype])


def _check_layout(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    """Tensors must not overlap, and the metadata must map strings to strings (as safetensors requires)."""
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and
                                     all(isinstance(v, str) for v in metadata.values())):
        raise _fail(path, "the header's __metadata__ is not a mapping of strings")
    spans = sorted(tuple(s["data_offsets"]) for n, s in header.items() if n != "__metadata__")
    end = 0
    for start, stop in spans:
        if start < end:
            raise _fail(path, "two tensors' data offsets overlap")
        end = stop
    if spans and end != data_bytes:
        raise _fail(path, f"the tensors cover {end} of the {data_bytes} data bytes (truncated or padded file)")


@contextlib.contextmanager
def safetensors_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn what safetensors raises on a damaged file into a ``UserError`` naming it."""
    try:
        yield
    except SafetensorError as err:
        raise _fail(Path(path), f"safetensors cannot read it ({err})") from None


def open_checked(path: str | os.PathLike) -> Any:
    """``safe_open`` a file (PyTorch tensors) after checking its header."""
    read_header(path)
    with safetensors_errors(path):
        return safe_open(path, framework="pt")
