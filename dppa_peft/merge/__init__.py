"""Merging: combine N sparse deltas onto a base, in memory (``load_merged``), streamed into a model folder
(``merge_to_folder``) or into one merged sparse adapter (``merge_to_adapter``).

``modes`` is the registry of merge modes (sum/linear, ties, magnitude_prune, dare_linear, dare_ties, della, ...:
an optional sparsify step and a consensus step); ``combine`` holds the per-entry consensus maths (sum, TIES
election); ``learned`` adds the modes that learn the adapters' factors first (``learned``, ``adamerging``);
``loader`` applies a mode to models and writes the outputs, their cards and merge records.
"""

from typing import TYPE_CHECKING, Any

from .combine import COMBINE_MODES
from .modes import MERGE_MODES, MergeMode, create_mode, mode_options, register_mode
from . import learned as _learned  # noqa: F401  (registers the learned merge modes)

if TYPE_CHECKING:  # imported on first use at run time (``__getattr__``)
    from .loader import combine_tensor, load_merged, merge_into, merge_to_adapter, merge_to_folder, replay

_LOADER_NAMES = ("combine_tensor", "load_merged", "merge_into", "merge_to_adapter", "merge_to_folder", "replay")


def __getattr__(name: str) -> Any:
    """The loader's functions, imported on first use: the command line's option parser imports ``merge.spec`` (and
    so this package) to list the merge modes, and ``loader`` imports peft, which ``--help`` must not wait for."""
    if name in _LOADER_NAMES:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COMBINE_MODES",
    "MERGE_MODES",
    "MergeMode",
    "combine_tensor",
    "create_mode",
    "load_merged",
    "merge_into",
    "merge_to_adapter",
    "merge_to_folder",
    "mode_options",
    "register_mode",
    "replay",
]
