"""Read a safetensors file safely: check its header, then read a tensor's byte range (checkpoints: no memory map)
or ``safe_open`` the checked file (adapters).

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

from ..core.buffers import empty
from ..core.errors import UserError

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
# safetensors dtype name -> torch dtype attribute (names, so importing this module does not load torch)
ST_DTYPE_NAMES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def st_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name ('BF16' -> torch.bfloat16)."""
    return getattr(torch, ST_DTYPE_NAMES[name])


def st_name(dtype: torch.dtype) -> str:
    """The safetensors dtype name of a torch dtype (torch.bfloat16 -> 'BF16')."""
    wanted = str(dtype).removeprefix("torch.")
    return next(k for k, v in ST_DTYPE_NAMES.items() if v == wanted)


FIX = "the file is damaged or not a safetensors file: re-download or re-save it"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: shape, dtype and where its bytes lie in the file."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    start: int = 0  # absolute byte range of the data in the file
    end: int = 0


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
    entries = {
        name: _entry(path, name, spec, data_bytes, 8 + length)
        for name, spec in header.items()
        if name != "__metadata__"
    }
    _check_layout(path, header, data_bytes)
    return entries


def _entry(path: Path, name: str, spec: Any, data_bytes: int, data_start: int) -> TensorEntry:
    if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= set(spec):
        raise _fail(path, f"tensor {name!r} has a malformed header entry {str(spec)[:80]}")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in ST_DTYPE_NAMES:
        if isinstance(dtype, str) and dtype.startswith("F8"):
            raise _fail(
                path,
                f"tensor {name!r} is stored as {dtype} (float8), which dppa-peft does not read",
                "save the checkpoint in bfloat16, float16 or float32 (e.g. dequantize it) first",
            )
        raise _fail(
            path,
            f"tensor {name!r} has dtype {dtype!r}, which dppa-peft does not read",
            f"use one of {sorted(ST_DTYPE_NAMES)}",
        )
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _fail(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise _fail(
            path,
            f"tensor {name!r} has data offsets {offsets!r} outside the {data_bytes} data bytes "
            "(truncated file or bad offsets)",
        )
    expected = math.prod(shape) * st_dtype(dtype).itemsize
    if offsets[1] - offsets[0] != expected:
        raise _fail(
            path,
            f"tensor {name!r} of shape {shape} ({dtype}) needs {expected} bytes but its data offsets "
            f"span {offsets[1] - offsets[0]}",
        )
    return TensorEntry(tuple(shape), st_dtype(dtype), data_start + offsets[0], data_start + offsets[1])


def _check_layout(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    """Tensors must not overlap, and the metadata must map strings to strings (as safetensors requires)."""
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _fail(path, "the header's __metadata__ is not a mapping of strings")
    spans = sorted(tuple(s["data_offsets"]) for n, s in header.items() if n != "__metadata__")
    end = 0
    for start, stop in spans:
        if start < end:
            raise _fail(path, "two tensors' data offsets overlap")
        end = stop
    if spans and end != data_bytes:
        raise _fail(path, f"the tensors cover {end} of the {data_bytes} data bytes (truncated or padded file)")


def read_tensor(path: str | os.PathLike, entry: TensorEntry, out: torch.Tensor | None = None) -> torch.Tensor:
    """Read one checked tensor's bytes straight into a new CPU tensor (``readinto``: one copy from the page cache),
    or into ``out`` (a contiguous CPU tensor of the entry's shape and dtype, e.g. a reused scratch buffer)."""
    if out is None:
        buffer = empty((entry.end - entry.start,), torch.uint8)
    else:
        if tuple(out.shape) != tuple(entry.shape) or out.dtype != entry.dtype or not out.is_contiguous():
            raise ValueError(f"read_tensor: out must be a contiguous {entry.dtype} tensor of shape {list(entry.shape)}")
        buffer = out.reshape(-1).view(torch.uint8)
    view, done = buffer.numpy().data, 0  # a writable memoryview of the tensor's bytes
    with open(path, "rb", buffering=0) as handle:
        handle.seek(entry.start)
        while done < len(view):
            count = handle.readinto(view[done:])
            if not count:
                raise _fail(
                    Path(path),
                    f"the file ends inside a tensor (bytes {entry.start}..{entry.end}; truncated after it was opened)",
                )
            done += count
    return buffer.view(entry.dtype).reshape(entry.shape)


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
