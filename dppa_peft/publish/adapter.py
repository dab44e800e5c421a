"""The adapter handle of the Python API: an adapter folder (``format.io.AdapterFolder``: config and checked stored
tensors) that also gives its effective deltas (``kernel.weights``) and publishes itself on the Hub (``publish.hub``).

``prune``, ``amplify``, ``merge_to_adapter`` and ``open_adapter`` return it; it lives here, above the format and the
kernel, because it pushes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..core.spec import Source
from ..format.io import AdapterFolder
from ..kernel.weights import adapter_delta
from ..methods.base import SparseDelta
from .hub import push_to_hub

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo


class SparseDeltaAdapter(AdapterFolder):
    """A saved sparse delta adapter (local folder or Hub repo): its config, its stored tensors and their effective
    deltas, and ``push_to_hub``."""

    def sparse_tensor(self, name: str) -> SparseDelta:
        """One stored delta with every amplification factor applied (fp32 effective values, ``kernel.weights``)."""
        return adapter_delta(self, name)

    def push_to_hub(self, repo_id: str, **options: Any) -> "CommitInfo":
        """Publish this adapter as ONE commit on ``repo_id`` (created if needed): ``options`` as in
        ``dppa_peft.publish.hub.push_to_hub`` (the fields of ``PushSpec``, ``token``, ``eval_results``, ``base``)."""
        return push_to_hub(self, repo_id, **options)


def open_adapter(
    ref: Source | str | os.PathLike | AdapterFolder, revision: str | None = None, token: str | bool | None = None
) -> SparseDeltaAdapter:
    """Accept an adapter handle, a Source, a local folder or a Hub id."""
    return SparseDeltaAdapter.open(ref, revision, token)
