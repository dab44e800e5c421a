"""Merging: combine N sparse deltas onto a base, in memory (``load_merged``) or streamed (``merge_to_folder``).

``combine`` holds the per-tensor maths of every combine mode (sum, TIES, ...); ``loader`` applies it to models.
The loader's names load on first use, so the merge-mode registry can be read without importing transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from .combine import COMBINE_MODES

_LOADER = ("combine_tensor", "load_merged", "merge_to_folder")
__all__ = ["COMBINE_MODES", *_LOADER]


def __getattr__(name: str) -> Any:
    if name not in _LOADER:
        raise AttributeError(f"module 'dppa_peft.merge' has no attribute {name!r}")
    return getattr(importlib.import_module(".loader", __name__), name)
