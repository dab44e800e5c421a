"""Small validators shared by every path: JSON files, finite numbers and tensors. Each raises a ``UserError``
that names the file / option / tensor and says how to fix it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from .errors import UserError


def read_json(path: str | os.PathLike, kind: str = "JSON file", expect: type | None = dict) -> Any:
    """Parse a JSON file; bad JSON or a value of the wrong type (e.g. a list for a config) names the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{kind} {path} is not UTF-8 text ({err.reason}); restore or re-download it") from None
    except json.JSONDecodeError as err:
        raise UserError(
            f"{kind} {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "restore or re-download it"
        ) from None
    if expect is not None and not isinstance(data, expect):
        raise UserError(
            f"{kind} {path} holds a JSON {type(data).__name__}, not a JSON "
            f"{'object' if expect is dict else expect.__name__}; restore or re-download it"
        )
    return data


def finite_number(value: Any, name: str) -> float:
    """``value`` as a float, refusing NaN, ±inf and non-numbers (``name`` is the option, e.g. '--weight')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@overload
def finite_numbers(values: None, name: str) -> None: ...
@overload
def finite_numbers(values: Iterable[Any], name: str) -> list[float]: ...
def finite_numbers(values: Iterable[Any] | None, name: str) -> list[float] | None:
    """Every entry of a list option through ``finite_number`` (None stays None)."""
    return None if values is None else [finite_number(v, f"{name}[{i}]") for i, v in enumerate(values)]


HALF_EXPONENTS = {"bfloat16": 0x7F80, "float16": 0x7C00}  # exponent bits, all set only for inf and NaN
CHUNK = 1 << 18  # entries per cache-sized chunk of the half-precision test


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or ±inf in ``tensor``. A CPU bf16/fp16 tensor: the exponent bits of every entry, tested in cache-sized
    chunks (no full-size temporary); otherwise one fp32 sum (NaN and inf propagate through it), and the exact
    elementwise test only when the sum is not finite (a NaN/inf entry, or an overflow of the sum itself)."""
    if not tensor.is_floating_point():
        return True
    exponent = HALF_EXPONENTS.get(str(tensor.dtype).removeprefix("torch."))
    if exponent is not None and tensor.device.type == "cpu":
        bits = tensor.detach().reshape(-1).view(torch.int16).numpy()
        scratch = np.empty(min(CHUNK, bits.size), dtype=np.int16)
        for start in range(0, bits.size, CHUNK):
            part = scratch[: min(CHUNK, bits.size - start)]
            np.bitwise_and(bits[start : start + CHUNK], exponent, out=part)
            if int(part.max()) == exponent:
                return False
        return True
    if bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(tensor).all())


def check_finite(tensor: torch.Tensor, name: str, where: str, fix: str) -> None:
    """Refuse a tensor holding NaN or ±inf, with how many and where (``fix`` says what to do)."""
    if all_finite(tensor):
        return
    bad = ~torch.isfinite(tensor)
    if bad.any():
        count = int(bad.sum())
        first = int(bad.reshape(-1).nonzero()[0])
        raise UserError(
            f"tensor {name!r} of {where} holds {count} non-finite value(s) (NaN or inf; first at flat "
            f"position {first}); {fix}"
        )


def check_finite_params(params: Any, where: str) -> None:
    """Every float (or list of floats) field of a parameter dataclass must be finite (``--lam nan`` etc.)."""
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        option = "--" + field.name.replace("_", "-")
        if isinstance(value, float):
            finite_number(value, f"{where} {option}")
        elif isinstance(value, (list, tuple)) and any(isinstance(v, float) for v in value):
            finite_numbers(value, f"{where} {option}")
