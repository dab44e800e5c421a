"""Helpers that build damaged or hostile inputs from the tiny test models (for tests/test_reliability_*.py)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def copy_model(source: Path, target: Path, edit: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Path:
    """A copy of a single-file model folder, its tensors changed in place by ``edit``."""
    shutil.copytree(source, target)
    if edit is not None:
        tensors = load_file(target / "model.safetensors")
        edit(tensors)
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    """Rewrite a JSON file through ``edit`` (which changes the dict in place, or returns a replacement)."""
    data = json.loads(path.read_text())
    result = edit(data)
    path.write_text(json.dumps(data if result is None else result))


def raw_safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors byte string with any header (even invalid), optionally lying about its length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data
