"""Merging: combine N sparse deltas onto a base, in memory (``load_merged``) or streamed (``merge_to_folder``).

``combine`` holds the per-tensor maths of every combine mode (sum, TIES, ...); ``loader`` applies it to models.
"""

from .combine import COMBINE_MODES
from .loader import combine_tensor, load_merged, merge_into, merge_to_folder

__all__ = ["COMBINE_MODES", "combine_tensor", "load_merged", "merge_into", "merge_to_folder"]
