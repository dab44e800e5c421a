"""dppa-peft: sparse delta adapters (DP / DPA pruning and baselines) for fine-tuned LLMs, loadable with PEFT.

Importing the package registers the ``SPARSE_DELTA`` adapter type with PEFT, so ``PeftModel.from_pretrained``,
``load_adapter`` and ``merge_and_unload`` work on adapters written by ``dppa_peft.prune``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dppa-peft")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

from .tuner import BaseModelMismatchError, SparseDeltaConfig, SparseDeltaModel  # noqa: E402  (registers with PEFT)
from .publish.export import SupertuningExport, export_supertuning  # noqa: E402
from .format.io import SparseDeltaAdapter  # noqa: E402
from .amplify.api import amplify, prune_and_amplify  # noqa: E402
from .merge import load_merged, merge_to_adapter, merge_to_folder  # noqa: E402
from .pipeline import PruneSummary, open_adapter, prune  # noqa: E402

__all__ = [
    "BaseModelMismatchError", "PruneSummary", "SparseDeltaAdapter", "SparseDeltaConfig", "SparseDeltaModel",
    "SupertuningExport", "__version__", "amplify", "export_supertuning", "load_merged", "merge_to_adapter", "merge_to_folder",
    "open_adapter", "prune", "prune_and_amplify",
]
