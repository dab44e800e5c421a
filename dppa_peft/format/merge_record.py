"""The machine-readable record of a merge (``dppa_merge.json``, like mergekit's config), read and written.

A merged model folder holds ``dppa_merge.json``; a merged adapter holds the same record in the ``merge`` field of
its ``adapter_config.json``. ``dppa-peft merge --from-record FILE`` (``replay``) runs the recorded merge again
(same base, adapters at their resolved Hub commits, weights, mode and options) and gives identical weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.version import __version__
from .config import SparseDeltaConfig
from .record import TensorRecord

RECORD_FILE = "dppa_merge.json"
RECORD_VERSION = 1


@dataclass
class MergeSource:
    """One input of a merge: a folder (absolute path) or a Hub id, its revision and resolved commit."""

    ref: str
    revision: str | None = None
    commit: str | None = None
    weight: float | None = None  # adapters only
    method: dict[str, Any] | None = None  # adapters only: the pruning method, rate and parameters
    base_model: str | None = None  # adapters only: the base the adapter was made from
    fingerprint: str | None = None  # adapters only: its base fingerprint

    @property
    def replay_revision(self) -> str | None:
        """The revision a replay loads: the resolved commit when known, else the recorded revision."""
        return self.commit or self.revision


@dataclass
class MergeRecord:
    """What was merged, how, and into what: enough to replay the merge."""

    output: str  # "model" (a dense model folder) or "adapter" (a merged sparse adapter)
    base: MergeSource
    adapters: list[MergeSource]
    mode: str
    params: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # model output: dtype of the written weights (None: each base tensor's dtype)
    value_dtype: str | None = None  # adapter output: dtype of the stored values
    package_version: str | None = None
    command: str | None = None
    learned: dict[str, Any] | None = None  # learned modes: what was learned (settings, loss curves); a replay re-learns
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "merge record") -> "MergeRecord":
        """Read a record; a newer record version or a missing key is a clear error."""
        if not isinstance(data, dict):
            raise ValueError(f"{origin} is not a merge record (expected a JSON object)")
        if data.get("version", 1) > RECORD_VERSION:
            raise ValueError(
                f"{origin} has merge record version {data['version']}: it was written by a newer dppa-peft; upgrade"
            )
        try:
            return cls(
                **{
                    **data,
                    "base": MergeSource(**data["base"]),
                    "adapters": [MergeSource(**a) for a in data["adapters"]],
                }
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"{origin} is not a valid merge record: {err}") from None

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / RECORD_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def read_record(path: str | os.PathLike) -> MergeRecord:
    """Read ``dppa_merge.json``, a folder holding it, or a merged adapter (folder or its ``adapter_config.json``)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / RECORD_FILE, path / "adapter_config.json"]
        path = next((p for p in candidates if p.is_file()), candidates[0])
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise FileNotFoundError(f"cannot read the merge record {path}: {err.strerror}") from None
    except ValueError as err:
        raise ValueError(f"{path} is not JSON: {err}") from None
    if path.name == "adapter_config.json":
        if not data.get("merge"):
            raise ValueError(
                f"{path} is an adapter that was not made by a merge; pass a {RECORD_FILE} or a merged adapter"
            )
        data = data["merge"]
    return MergeRecord.from_dict(data, origin=str(path))


def source_of(ref: str | os.PathLike, revision: str | None, folder: Path) -> MergeSource:
    """A source as recorded: local folders by absolute path; Hub ids with the commit they resolved to."""
    if Path(ref).expanduser().is_dir():
        return MergeSource(ref=str(Path(ref).expanduser().resolve()))
    commit = folder.name if folder.parent.name == "snapshots" else None
    return MergeSource(ref=str(ref), revision=revision, commit=commit)


def merged_adapter_config(
    record: MergeRecord, records: dict[str, TensorRecord], base_fingerprint: str | None, vocab_size: int | None
) -> SparseDeltaConfig:
    """The config of a merged adapter: its tensors, the merge record and a size summary."""
    pruned = [r for r in records.values() if r.pruned]
    numel = sum(r.numel for r in pruned)
    itemsize = getattr(torch, record.value_dtype or "float32").itemsize
    summary = {
        "kept_density": sum(r.nnz for r in pruned) / numel if numel else 0.0,
        "adapter_bytes": sum(r.stored_bytes or 0 for r in pruned),
        "dense_delta_bytes": numel * itemsize,
    }
    summary["size_ratio"] = summary["adapter_bytes"] / numel / itemsize if numel else 0.0
    return SparseDeltaConfig(
        base_model_name_or_path=record.base.ref,
        revision=record.base.revision,
        base_fingerprint=base_fingerprint,
        method={"name": "merge", "mode": record.mode, "params": record.params},
        tensors=records,
        vocab_size=vocab_size,
        inference_mode=True,
        task_type="CAUSAL_LM",
        summary=summary,
        merge=record.to_dict(),
        provenance={
            "command": record.command or f"dppa_peft.merge (mode {record.mode!r})",
            "package_version": __version__,
        },
    )
