"""Combine N sparse deltas onto a base: in memory (``load_merged``) or streamed to a folder (``merge_to_folder``)."""

from .loader import combine_tensor, load_merged, merge_to_folder

__all__ = ["combine_tensor", "load_merged", "merge_to_folder"]
