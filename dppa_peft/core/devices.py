"""One meaning of ``device`` and ``dtype`` for every step that computes, resolved here and nowhere else.

``device``: "cpu" (default), "cuda", "cuda:1", "mps", ... or "auto" (the first accelerator torch sees, else the
CPU). Nothing here names a device type: the same code runs wherever torch runs.
"""

from __future__ import annotations

import gc

import torch

from .choices import DTYPES
from .errors import UserError

AUTO = "auto"
COMPUTE_DTYPES = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for a ``--device`` value; a clear error for a malformed or unavailable one."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == AUTO:
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        return accelerator or torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"--device {device!r} is not a device ({err}); pass cpu, cuda, cuda:1, mps or auto") from None
    if resolved.type != "cpu" and resolved.type != "meta":
        module = getattr(torch, resolved.type, None)
        available = getattr(module, "is_available", lambda: False)()
        count = getattr(module, "device_count", lambda: 1)() if available else 0
        if not available or (resolved.index is not None and resolved.index >= count):
            raise UserError(
                f"--device {device!r}: no such {resolved.type} device here ({count} available); "
                "pass --device cpu or auto"
            )
    return resolved


def compute_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """The dtype deltas are computed in: float32 for "auto" (exact), or the named one."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return COMPUTE_DTYPES["auto" if dtype is None else dtype]
    except KeyError:
        raise UserError(f"--dtype {dtype!r} is not one of {sorted(COMPUTE_DTYPES)}") from None


def release_memory() -> None:
    """Return the memory of models the caller has just dropped (``del model``): collect, then empty torch's
    accelerator cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype of a ``DTYPES`` name (a torch dtype as is); None for 'auto' or None (keep the checkpoint's)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    return None if dtype == "auto" else getattr(torch, dtype)
