"""``SparseDeltaConfig``: what ``adapter_config.json`` holds for a sparse delta adapter."""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft.config import PeftConfig

from ..core.errors import UserError
from .record import TensorRecord

FORMAT_VERSION = 2  # what this package writes; it reads 1 (absent field) and 2
CardWriter = Callable[["SparseDeltaConfig", Path], object]
_CARD_WRITERS: list[CardWriter] = []


def register_card_writer(writer: CardWriter) -> None:
    """Set the function that writes an adapter's ``README.md`` whenever its config is saved (``publish.card``'s;
    ``tuner.registration`` sets it)."""
    _CARD_WRITERS[:] = [writer]


class SparseDeltaType(str, enum.Enum):
    """The PEFT type of this package (PEFT's own ``PeftType`` enum is closed, so we bring a member of our own)."""

    SPARSE_DELTA = "SPARSE_DELTA"


@dataclass
class SparseDeltaConfig(PeftConfig):
    """Configuration of a sparse delta adapter: ``W = W_B + Σ_tensors scatter(values · factor[partition])``.

    ``tensors`` maps every stored checkpoint tensor name to its ``TensorRecord`` (``format.record``: shape, nnz,
    encoding, stored bytes, densities, and in format version 2 the ``[P, R]`` shape of a stored factor table).
    Records given as JSON objects are read (and checked) by ``TensorRecord.from_dict``; ``to_dict`` writes them
    back as the same JSON.

    ``format_version``: 2 for adapters written by this package; absent (None) means 1. Version 2 only adds the
    optional factor tables, so both load; a higher version is refused.

    ``amplification`` (DPA, see ``dppa_peft.amplify``) holds ``partition_rates``, ``combine``, ``raw_factors``,
    ``factors`` (the effective factor per partition id that loading applies), ``amplify_unpruned``,
    ``unpruned_factor`` and ``search`` (strategy, bounds, calls, history, scores, objective).

    ``merge`` (merged adapters only) is the record of the merge (``format.merge_record.MergeRecord``).

    ``target_modules`` is always None: the changed modules are exactly those of ``tensors`` (``module_names``).
    PEFT keys name heuristics on ``target_modules`` that must not apply to this type: its ``save_pretrained``
    would add the base embeddings and lm_head when it sees ``lm_head`` there, and it condenses long lists.

    Saving the config also writes the adapter's model card (``README.md``), so PEFT's own
    ``PeftModel.save_pretrained`` writes dppa-peft's card rather than PEFT's template.
    """

    base_fingerprint: str | None = field(default=None, metadata={"help": "digest of sampled base weights"})
    method: dict[str, Any] = field(default_factory=dict, metadata={"help": "pruning method, rate and parameters"})
    scope_pattern: str | None = field(default=None, metadata={"help": "regex selecting the pruned tensors"})
    outside_scope: str = field(default="dense", metadata={"help": "how changed tensors outside the scope are kept"})
    tensors: dict[str, TensorRecord] = field(default_factory=dict, metadata={"help": "per-tensor records"})
    amplification: dict[str, Any] | None = field(default=None, metadata={"help": "DPA partitions, factors, search"})
    vocab_size: int | None = field(default=None, metadata={"help": "resize the base embeddings to this size"})
    summary: dict[str, Any] = field(default_factory=dict, metadata={"help": "kept density and sizes"})
    provenance: dict[str, Any] = field(default_factory=dict, metadata={"help": "command/recipe, package version"})
    merge: dict[str, Any] | None = field(default=None, metadata={"help": "merged adapters: the merge record"})
    target_modules: list[str] | None = field(default=None, metadata={"help": "always None (see module_names)"})
    format_version: int | None = field(default=None, metadata={"help": "adapter format version (absent: 1)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_format_version(self.format_version)
        self.peft_type = SparseDeltaType.SPARSE_DELTA
        self.target_modules = None
        self.tensors = {
            name: r if isinstance(r, TensorRecord) else TensorRecord.from_dict(name, r, "adapter config")
            for name, r in self.tensors.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """PEFT's dict of the config fields, with each tensor record as its JSON object."""
        data = super().to_dict()
        data["tensors"] = {name: record.to_dict() for name, record in self.tensors.items()}
        return data

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write ``adapter_config.json`` and the model card (PEFT's ``PeftModel.save_pretrained`` calls this too)."""
        super().save_pretrained(save_directory, **kwargs)
        for writer in _CARD_WRITERS:
            writer(self, Path(save_directory))

    @property
    def factors(self) -> list[float]:
        """Effective amplification factor per partition of the pruned tensors (``[1.0]`` when not amplified)."""
        return list(self.amplification["factors"]) if self.amplification else [1.0]

    def tensor_factors(self, name: str) -> list[float]:
        """Factors indexed by partition id for one stored tensor.

        Pruned tensors take ``factors``; tensors stored outside the pruning scope take the single
        ``unpruned_factor`` (1.0 unless the adapter amplifies them like the released DPPA code).
        """
        if self.tensors[name].pruned:
            return self.factors
        return [float(self.amplification.get("unpruned_factor", 1.0))] if self.amplification else [1.0]

    @functools.cached_property
    def module_names(self) -> frozenset[str]:
        """Names of the modules whose parameters the adapter changes (exact, unlike PEFT's condensed targets)."""
        return frozenset(module_and_param(n)[0] for n in self.tensors)

    def records_for_module(self, module_name: str) -> dict[str, TensorRecord]:
        """The records of one module, keyed by parameter name ('weight', 'bias', ...)."""
        out = {}
        for name, record in self.tensors.items():
            module, param = module_and_param(name)
            if module == module_name:
                out[param] = record
        return out


def check_format_version(version: int | None) -> None:
    """Accept format versions 1 and 2 (None = 1); a higher one was written by a newer dppa-peft."""
    if version is None or version in range(1, FORMAT_VERSION + 1):
        return
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UserError(
            f"this adapter has format version {version}: it was written by a newer dppa-peft (this one "
            f"reads versions 1 to {FORMAT_VERSION}); upgrade: pip install -U dppa-peft"
        )
    raise UserError(f"adapter_config.json has an invalid format_version {version!r}; expected 1 or 2")


def module_and_param(tensor_name: str) -> tuple[str, str]:
    """'model.layers.0.mlp.up_proj.weight' -> ('model.layers.0.mlp.up_proj', 'weight')."""
    module, _, param = tensor_name.rpartition(".")
    return module, param
