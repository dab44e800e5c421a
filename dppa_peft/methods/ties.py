"""TIES trim: the per-tensor exact top-k of TIES-Merging (docs/algorithms.md §4).

The trim is magnitude pruning under another name, so recipes can say ``ties``; the sign election and the disjoint
mean belong to merging (``dppa_peft.merge.combine``, mode ``"ties"``).
"""

from __future__ import annotations

from .magnitude import Magnitude
from .registry import register


@register
class TiesTrim(Magnitude):
    name = "ties"
    summary = "TIES trim: keep the largest |delta| of every tensor; sign election happens when merging"
