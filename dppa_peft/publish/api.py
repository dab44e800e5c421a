"""``push(PushSpec)`` and ``export(ExportSpec)``: the entry points behind ``dppa-peft push`` and ``dppa-peft export``."""

from __future__ import annotations

from huggingface_hub import CommitInfo

from .adapter import SparseDeltaAdapter
from .card import load_eval_results
from .export import export_supertuning
from .hub import publish
from .stock import SupertuningExport
from .spec import SUPERTUNING, ExportSpec, PushSpec


def push(spec: PushSpec, token: str | bool | None = None) -> CommitInfo:
    """``dppa-peft push``: open ``spec.adapter`` and publish it; see ``publish``."""
    results = load_eval_results(spec.eval_results) if spec.eval_results else None  # fails before any download
    adapter = SparseDeltaAdapter.from_pretrained(spec.adapter.ref, revision=spec.adapter.revision, token=token)
    return publish(adapter, spec, token=token, eval_results=results)


def export(
    spec: ExportSpec, token: str | bool | None = None, progress: bool = True
) -> SupertuningExport | SparseDeltaAdapter:
    """``dppa-peft export``: ``spec.adapter`` written to ``spec.out`` as a SUPERTUNING export (returned), or copied as
    is for 'sparse-delta' (the copy returned)."""
    adapter = SparseDeltaAdapter.from_pretrained(spec.adapter.ref, revision=spec.adapter.revision, token=token)
    if spec.export_format != SUPERTUNING:
        return SparseDeltaAdapter(adapter.save_pretrained(spec.out, overwrite=spec.overwrite))
    return export_supertuning(
        adapter,
        spec.out,
        base=None if spec.base is None else spec.base.ref,
        base_revision=None if spec.base is None else spec.base.revision,
        token=token,
        overwrite=spec.overwrite,
        progress=progress,
    )
