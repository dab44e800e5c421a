"""Adapter folders: write one streamed tensor at a time, read back as an ``AdapterFolder`` (its config and its stored
tensors, checked). The public handle, ``publish.adapter.SparseDeltaAdapter``, adds the effective deltas (the kernel)
and the Hub push.

Layout (PEFT's): ``adapter_config.json``, ``adapter_model.safetensors`` (keys
``base_model.model.<module>.sparse_delta.<param>_{values,index,partition,factors}``) and ``README.md`` (model card).
``_factors`` (format version 2) is a float32 ``[P, R]`` table of learned amplification factors (``kernel.weights``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..core.errors import UserError
from ..core.spec import Source
from ..io.checkpoint import SafetensorsWriter, atomic_directory, describe_ref, resolve_repo
from ..io.safetensors_file import open_checked, read_header, safetensors_errors
from .config import FORMAT_VERSION, SparseDeltaConfig, module_and_param
from .encoding import EncodedTensor
from .record import TensorRecord
from .validate import check_encoded, check_stored_parts, read_adapter_config

Folder = TypeVar("Folder", bound="AdapterFolder")  # a subclass's constructors return that subclass
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "README.md"
ADAPTER_FILES = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]


def state_key(tensor_name: str, part: str) -> str:
    """Checkpoint key of one stored part ('values', 'index', 'partition' or 'factors') of a delta tensor."""
    module, param = module_and_param(tensor_name)
    return f"base_model.model.{module}.sparse_delta.{param}_{part}"


class AdapterWriter:
    """Stream encoded tensors into ``adapter_model.safetensors``; ``close`` adds the config and the card."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._weights = SafetensorsWriter(self.directory / WEIGHTS_FILE)
        self.records: dict[str, TensorRecord] = {}

    def add(self, name: str, encoded: EncodedTensor, **described: Any) -> TensorRecord:
        """Write one tensor and record it: its stored form from ``encoded``, the ``described`` fields of
        ``TensorRecord`` (``pruned``, ``block``, ...) as given."""
        self._weights.add(state_key(name, "values"), encoded.values)
        if encoded.index is not None:
            self._weights.add(state_key(name, "index"), encoded.index)
        if encoded.partition is not None:
            self._weights.add(state_key(name, "partition"), encoded.partition)
        if encoded.factors is not None:
            self._weights.add(state_key(name, "factors"), encoded.factors.detach().float().cpu().contiguous())
        self.records[name] = TensorRecord.of(encoded, **described)
        return self.records[name]

    def close(self, config: SparseDeltaConfig) -> None:
        """Finish the weights file and write the config (as the current format version) and the card."""
        self._weights.close()
        config.format_version = FORMAT_VERSION
        config.save_pretrained(str(self.directory))  # also writes the card


class AdapterFolder:
    """A saved sparse delta adapter (local folder or Hub repo): its config and lazily read, checked stored tensors."""

    def __init__(self, directory: str | os.PathLike, ref: str | None = None) -> None:
        self.directory = Path(directory)
        self.ref = ref or str(directory)
        if not (self.directory / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"{self.ref} has no {CONFIG_FILE}; pass a folder written by `dppa-peft prune` "
                "or a Hub repo written by `dppa-peft push`"
            )
        if not (self.directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"{self.ref} has {CONFIG_FILE} but no {WEIGHTS_FILE}: the adapter is incomplete; "
                "prune (or push) it again"
            )
        self.config: SparseDeltaConfig = read_adapter_config(self.directory / CONFIG_FILE, self.ref)
        check_stored_parts(
            self.config, read_header(self.directory / WEIGHTS_FILE), state_key, self.directory / WEIGHTS_FILE
        )
        self._handle: Any = None  # safetensors' safe_open handle, opened on the first read
        self._factor_tables: dict[str, torch.Tensor] = {}
        self._partition_ids: dict[str, torch.Tensor] = {}

    def with_factors(
        self: Folder, tables: dict[str, torch.Tensor], partitions: dict[str, torch.Tensor] | None = None
    ) -> Folder:
        """This adapter read with ``tables`` (tensor name -> fp32 ``[P, R]`` factors) in place of its stored factor
        tables, in memory (e.g. the factors a learned merge learned for it); its files are not changed.

        ``partitions`` (tensor name -> partition id per stored value) replace the stored ids of those tensors; their
        scalar factors are then the stored ones if there are as many, else 1 each (the rule of
        ``amplify.learned.Student``, which learned the tables)."""
        view = copy.copy(self)
        view._factor_tables = {**self._factor_tables, **tables}
        view._partition_ids = {**self._partition_ids, **(partitions or {})}
        return view

    def scalar_factors(self, name: str) -> list[float]:
        """The scalar (DPA) factors of one tensor, indexed by partition id (see ``with_factors``)."""
        factors = self.config.tensor_factors(name)
        ids = self._partition_ids.get(name)
        if ids is None:
            return factors
        table = self._factor_tables.get(name)
        count = int(table.shape[0]) if table is not None else int(ids.max()) + 1 if ids.numel() else 1
        return factors if len(factors) == count else [1.0] * count

    @classmethod
    def from_pretrained(
        cls: type[Folder], ref: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
    ) -> Folder:
        """Open a local adapter folder or download one from the Hub (cached)."""
        folder = resolve_repo(ref, revision=revision, token=token, allow_patterns=ADAPTER_FILES)
        return cls(folder, ref=describe_ref(ref, revision))

    @classmethod
    def open(
        cls: type[Folder],
        ref: Source | str | os.PathLike | AdapterFolder,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> Folder:
        """An open handle of this class as it is; else a Source, a local folder or a Hub id opened."""
        if isinstance(ref, cls):
            return ref
        source = Source.of(ref, revision)
        return cls.from_pretrained(source.ref, revision=source.revision, token=token)

    def encoded(self, name: str) -> EncodedTensor:
        """One stored delta exactly as stored: values in the stored dtype, index bytes, partition ids (checked)."""
        return self.stored(name)[0]

    def stored(self, name: str) -> tuple[EncodedTensor, torch.Tensor | None]:
        """The stored parts of one tensor and its decoded indices (None when dense), after ``check_encoded``."""
        weights = self.directory / WEIGHTS_FILE
        if self._handle is None:
            self._handle = open_checked(weights)
        record = self.config.tensors[name]
        with safetensors_errors(weights):
            stored = {kind: self._handle.get_tensor(state_key(name, kind)) for kind in record.parts()}
        encoded = EncodedTensor(
            record.encoding,
            record.shape,
            stored["values"],
            stored.get("index"),
            stored.get("partition"),
            stored.get("factors"),
        )
        indices = check_encoded(name, encoded, len(self.config.tensor_factors(name)), self.ref)
        table = self._factor_tables.get(name)
        if name in self._partition_ids:
            encoded = dataclasses.replace(encoded, partition=self._partition_ids[name])
        return (encoded if table is None else dataclasses.replace(encoded, factors=table)), indices

    def verify(self) -> None:
        """Decode and check every stored tensor (``push`` does this before publishing)."""
        for name in self.config.tensors:
            self.stored(name)

    @property
    def base_ref(self) -> str:
        """The base model recorded in the config (folder or Hub id); an error when it records none."""
        base = self.config.base_model_name_or_path
        if not base:
            raise UserError(f"adapter {self.ref} records no base model; pass the base it was pruned from (--base)")
        return base

    @property
    def nbytes(self) -> int:
        return (self.directory / WEIGHTS_FILE).stat().st_size

    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Copy the adapter files to ``directory`` (atomically)."""
        with atomic_directory(directory, overwrite=overwrite, inputs=[self.directory]) as tmp:
            for name in ADAPTER_FILES:
                if (self.directory / name).is_file():
                    shutil.copy2(self.directory / name, tmp / name)
        return Path(directory)
