"""Checkpoints on disk: open a local folder or Hub id, read one tensor at a time, write safetensors atomically.

Only safetensors are read or written (pickled ``*.bin`` checkpoints are refused). A tensor is read with one
positioned read of its byte range into a fresh buffer (no memory map: mapped pages would count in the process's
resident memory until the file is closed, so a streamed pass over a 7B model would hold the whole model resident),
so a model is never materialised; writing streams tensors into a temporary data file and assembles the final file at
the end, then renames it into place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UserError
from ..core.output import atomic_directory  # noqa: F401  (re-exported: the one way results are written, see output.py)
from .safetensors_file import TensorEntry, read_header, read_tensor, st_name
from ..core.validate import read_json

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HUB_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "*.jinja", "README.md"]


def looks_like_local_path(ref: str) -> bool:
    """A reference that can only be meant as a path (absolute, ./, ../, ~ or more than one '/')."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref


def resolve_repo(
    ref: str | os.PathLike,
    revision: str | None = None,
    token: str | bool | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Return a local folder for ``ref``: an existing folder as is, else a Hub repo id downloaded into the HF cache.

    ``revision`` (branch, tag or commit sha) applies to Hub ids only. With ``HF_HUB_OFFLINE=1`` a Hub id is served
    from the cache. Hub failures become FileNotFoundError/ValueError with a message naming the problem and the fix.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        if revision:
            raise ValueError(f"{str(ref)!r} is a local folder: a revision ({revision!r}) applies to Hub ids only")
        return path
    ref = str(ref)
    if path.exists():
        raise UserError(f"{ref!r} is a file, not a folder; pass the model or adapter folder that holds it")
    if looks_like_local_path(ref) or _under_local_folder(path):
        raise FileNotFoundError(f"no such folder: {ref!r}; pass an existing local folder or a Hub id like 'user/model'")
    from huggingface_hub import snapshot_download

    from ..core.hub_errors import hub_errors

    with hub_errors(ref, revision):
        folder = snapshot_download(ref, revision=revision, token=token, allow_patterns=allow_patterns or HUB_PATTERNS)
    return Path(folder)


def _under_local_folder(path: Path) -> bool:
    """'models/nosuch' where ./models exists: a mistyped local path, not a Hub id (no Hub round trip)."""
    return len(path.parts) == 2 and path.parent.is_dir()


def describe_ref(ref: str | os.PathLike, revision: str | None = None) -> str:
    """How messages name a folder or a Hub id at a revision: 'user/model@dev'."""
    return f"{ref}@{revision}" if revision else str(ref)


class Checkpoint:
    """Read-only access to a safetensors checkpoint (single file or sharded with an index), tensor by tensor."""

    def __init__(self, directory: str | os.PathLike, ref: str | None = None) -> None:
        self.directory = Path(directory)
        self.ref = ref or str(directory)
        self._entries: dict[str, TensorEntry] = {}  # shape and dtype of every tensor, from the checked headers
        self._shard_of = self._index_tensors()

    @classmethod
    def open(cls, ref: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> "Checkpoint":
        """Open a local folder or a Hub id (downloaded once into the Hugging Face cache)."""
        return cls(resolve_repo(ref, revision=revision, token=token), ref=describe_ref(ref, revision))

    def _index_tensors(self) -> dict[str, str]:
        index = self.directory / INDEX_FILE
        if index.is_file():
            return self._sharded(index)
        single = self.directory / SINGLE_FILE
        if single.is_file():
            self._entries = read_header(single)
            return {name: SINGLE_FILE for name in self._entries}
        if any(self.directory.glob("*.bin")) or any(self.directory.glob("*.pt")):
            raise UserError(
                f"{self.ref} holds only pickled weights (*.bin/*.pt), which dppa-peft never loads; convert it with "
                "`model.save_pretrained(dir, safe_serialization=True)` in a trusted environment first"
            )
        raise FileNotFoundError(f"{self.ref}: no {SINGLE_FILE} or {INDEX_FILE}; pass a transformers model folder")

    def _sharded(self, index: Path) -> dict[str, str]:
        """The index's tensor -> shard map, every shard confined to the folder and holding what the index says."""
        weight_map = read_json(index, "checkpoint index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise UserError(
                f"{index} has no 'weight_map' object mapping tensor names to shard files; re-download "
                "the checkpoint or re-save it with save_pretrained"
            )
        for shard in sorted(set(weight_map.values())):
            # judged by the name, not by resolving links: the Hugging Face cache links every file to a blob outside
            if Path(shard).is_absolute() or ".." in Path(shard).parts or not Path(shard).parts:
                raise UserError(
                    f"{index} names shard {shard!r} outside the checkpoint folder; an index may only name "
                    "files inside its own folder: fix the index or re-download the checkpoint"
                )
        missing = sorted({f for f in weight_map.values() if not (self.directory / f).is_file()})
        if missing:
            raise FileNotFoundError(f"{self.ref}: shards {missing} named in {INDEX_FILE} are missing; re-download it")
        for shard in sorted(set(weight_map.values())):
            for name, entry in read_header(self.directory / shard).items():
                if weight_map.get(name) == shard:
                    self._entries[name] = entry
        wrong = sorted(set(weight_map) - set(self._entries))
        if wrong:
            raise UserError(
                f"{index} maps tensors {wrong[:5]} to shards that do not hold them (e.g. "
                f"{weight_map[wrong[0]]!r}); the index does not match the shards: re-download the "
                "checkpoint"
            )
        return dict(weight_map)

    @property
    def config(self) -> dict[str, Any] | None:
        """The model's config.json as a dict, if present."""
        path = self.directory / "config.json"
        return read_json(path, "model config") if path.is_file() else None

    def names(self) -> list[str]:
        """All tensor names, sorted."""
        return sorted(self._shard_of)

    def __contains__(self, name: str) -> bool:
        return name in self._shard_of

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name].dtype

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Load one tensor into a fresh CPU buffer owned by the caller (one positioned read, no memory map), or into
        ``out`` (contiguous, of the tensor's shape and dtype)."""
        return read_tensor(self.directory / self._shard_of[name], self._entries[name], out)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a tensor of at least one dimension, read without loading the rest."""
        entry = self._entries[name]
        start, stop, _ = slice(start, stop).indices(entry.shape[0])
        stop = max(start, stop)
        row_bytes = math.prod(entry.shape[1:]) * entry.dtype.itemsize
        rows = TensorEntry(
            (stop - start, *entry.shape[1:]),
            entry.dtype,
            entry.start + start * row_bytes,
            entry.start + stop * row_bytes,
        )
        return read_tensor(self.directory / self._shard_of[name], rows)


def _copy_in_kernel(source: Any, target: Any, count: int) -> None:
    """Append ``count`` bytes of ``source`` to ``target``, in the kernel (``sendfile``) where the OS allows it."""
    start = target.tell()
    try:
        done = 0
        while done < count:
            sent = os.sendfile(target.fileno(), source.fileno(), done, count - done)
            if not sent:
                raise OSError("sendfile stopped early")
            done += sent
            target.seek(start + done)
    except (AttributeError, OSError):
        target.seek(start)
        target.truncate()
        source.seek(0)
        shutil.copyfileobj(source, target, length=16 << 20)


class SafetensorsWriter:
    """Stream tensors into one safetensors file: data goes to a temp file, the header is written at the end."""

    def __init__(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._entries: dict[str, dict[str, Any]] = {}
        self._offset = 0
        self._data = tempfile.NamedTemporaryFile(dir=self.path.parent, prefix=".data-", delete=False)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._entries:
            raise ValueError(f"tensor {name!r} written twice")
        tensor = tensor.detach().to("cpu").contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        self._data.write(raw.data)
        self._entries[name] = {
            "dtype": st_name(tensor.dtype),
            "shape": list(tensor.shape),
            "data_offsets": [self._offset, self._offset + raw.nbytes],
        }
        self._offset += raw.nbytes

    @property
    def nbytes(self) -> int:
        return self._offset

    def close(self) -> Path:
        """Write header + data into a temp file next to ``path`` and rename it into place."""
        self._data.close()
        header = json.dumps({"__metadata__": self.metadata, **self._entries}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(tmp, "wb") as out, open(self._data.name, "rb") as data:
                out.write(struct.pack("<Q", len(header)))
                out.write(header)
                out.flush()
                _copy_in_kernel(data, out, self._offset)
            os.replace(tmp, self.path)
        finally:
            os.unlink(self._data.name)
            if tmp.exists():
                tmp.unlink()
        return self.path


class ShardedWriter:
    """Write a model's tensors as ``model-0000i-of-0000n.safetensors`` shards plus an index (or one file)."""

    def __init__(self, directory: str | os.PathLike, max_shard_bytes: int = 4 << 30) -> None:
        self.directory = Path(directory)
        self.max_shard_bytes = max_shard_bytes
        self._shards: list[SafetensorsWriter] = []
        self._weight_map: dict[str, int] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if not self._shards or (self._shards[-1].nbytes and self._shards[-1].nbytes + size > self.max_shard_bytes):
            self._shards.append(SafetensorsWriter(self.directory / f".shard-{len(self._shards)}"))
        self._shards[-1].add(name, tensor)
        self._weight_map[name] = len(self._shards) - 1

    def close(self) -> list[Path]:
        """Finish every shard; name them and write the index when there is more than one."""
        count = len(self._shards)
        names = [SINGLE_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        for writer, name in zip(self._shards, names):
            writer.path = self.directory / name
            writer.close()
        if count > 1:
            index = {
                "metadata": {"total_size": sum(w.nbytes for w in self._shards)},
                "weight_map": {t: names[i] for t, i in sorted(self._weight_map.items())},
            }
            (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
        return [self.directory / n for n in names]
