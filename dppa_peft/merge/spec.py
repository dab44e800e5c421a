"""``MergeSpec``: what ``dppa-peft merge`` and the merge API write (a model folder, a merged adapter, or both)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.choices import DTYPES
from ..core.spec import Source, Spec, entry_params, fail, option
from ..core.validate import finite_numbers


def merge_modes() -> dict[str, Any]:
    """The registered merge modes by canonical name (aliases left out)."""
    from .modes import MERGE_MODES

    return {name: cls for name, cls in sorted(MERGE_MODES.items()) if name == cls.name}


def canonical_mode(name: str) -> str:
    from .modes import get_mode

    return str(get_mode(name).name)


def merge_mode_choices() -> list[str]:
    from .modes import MERGE_MODES

    return sorted(MERGE_MODES)


def mode_params(mode: str, params: Mapping[str, Any], path: str = "merge.params") -> Any:
    """Merge mode ``mode``'s parameter dataclass built from ``params``; unknown names are errors."""
    from .modes import get_mode

    return entry_params(get_mode, "merge mode", mode, "option", params, path)


ADAPTER_VALUE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class MergeInputs(Spec):
    """What a merge combines: N adapters (onto ``base``) with their weights, by merge ``mode``; or a recorded merge.

    The spec of the in-memory merges (``load_merged``, ``merge_into``); ``MergeSpec`` adds the outputs."""

    key: ClassVar[str] = "merge"
    base: Source | None = option(None, group="inputs", help="base model: folder or Hub id")
    adapters: list[Source] = option(
        default_factory=list,
        flag="--adapter",
        group="inputs",
        help=("adapter folder or Hub id; repeat for several adapters"),
    )
    weights: list[float] | None = option(
        None,
        flag="--weight",
        group="inputs",
        help=("weight w_i of each adapter, in --adapter order (default 1.0 each)"),
    )
    from_record: str | None = option(
        None,
        group="inputs",
        metavar="FILE",
        help=(
            "replay a recorded merge: a dppa_merge.json, a merged model folder or a merged adapter (replaces --base, "
            "--adapter, --weight, --mode and the mode options)"
        ),
    )
    allow_unverified_base: bool = option(
        False,
        group="inputs",
        help=(
            "merge adapters that record no base fingerprint (refused by default: nothing would check that they fit "
            "this base)"
        ),
    )
    device: str = option(
        "cpu",
        group="device",
        help=(
            "device the merge runs on (cpu, cuda, cuda:1, auto): where --out merges each touched tensor, and where "
            "learned merge modes (learned, adamerging) learn their factors"
        ),
    )
    mode: str = option(
        "sum",
        choices=merge_mode_choices,
        group="merge mode",
        help=("how the deltas combine (each mode's options are listed under it)"),
    )
    params: dict[str, Any] = option(
        default_factory=dict,
        group="merge mode options",
        help=("the merge mode's options"),
        params_of=merge_modes,
        resolve=canonical_mode,
        selector="mode",
        label="merge mode",
        choices_all=merge_mode_choices,
    )

    def validate(self) -> None:
        adapters = [Source.of(a) for a in self.adapters]
        if self.from_record is not None:
            given = [
                flag
                for flag, value in (
                    ("--base", self.base),
                    ("--adapter", adapters),
                    ("--weight", self.weights),
                    ("mode options", self.params),
                )
                if value
            ]
            if given:
                fail(f"merge: --from-record replays the recorded inputs; drop {', '.join(given)}")
            return
        if not adapters:
            fail("merge: pass a base (--base) and at least one adapter (--adapter), or --from-record FILE")
        weights = finite_numbers(self.weights, "--weight")
        if weights is not None and len(weights) != len(adapters):
            fail(f"merge.weights: got {len(weights)} weights for {len(adapters)} adapters; pass one per adapter")
        self._set(
            base=None if self.base is None else Source.of(self.base),
            adapters=adapters,
            weights=weights,
            mode=canonical_mode(self.mode),
            params=dataclasses.asdict(mode_params(self.mode, self.params)),
        )

    @property
    def adapter_weights(self) -> list[float]:
        """The weight of each adapter (1.0 each by default)."""
        return [1.0] * len(self.adapters) if self.weights is None else list(self.weights)

    @classmethod
    def build(
        cls,
        base: Any,
        adapters: Sequence[Any],
        out: Any = None,
        *,
        revision: str | None = None,
        adapter_revisions: Sequence[str | None] | None = None,
        **options: Any,
    ) -> Any:
        """The spec of the keyword API: spec fields, plus the mode's options by name (``out``: MergeSpec's)."""
        adapters = list(adapters or [])
        revisions = list(adapter_revisions) if adapter_revisions else [None] * len(adapters)
        if len(revisions) != len(adapters):
            fail(
                f"merge: got {len(revisions)} adapter revisions for {len(adapters)} adapters; pass one per adapter "
                "('main' for the default branch)"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        spec_options = {k: options.pop(k) for k in list(options) if k in fields}
        if "dtype" in spec_options:  # a torch dtype, a name or None
            dtype = spec_options["dtype"]
            spec_options["dtype"] = "auto" if dtype is None else str(dtype).removeprefix("torch.")
        if out is not None:
            spec_options["out"] = str(out)
        return cls(
            base=None if base is None else Source.of(base, revision),
            adapters=[Source.of(a, r) for a, r in zip(adapters, revisions)],
            params={**spec_options.pop("params", {}), **options},
            **spec_options,
        )


@dataclass(frozen=True, kw_only=True)
class MergeSpec(MergeInputs):
    """A base plus N adapters combined by merge ``mode`` into a dense model folder and/or one merged adapter."""

    out: str | None = option(
        None, group="outputs (at least one)", help=("output dense model folder (written atomically)")
    )
    out_adapter: str | None = option(
        None, group="outputs (at least one)", help=("output merged sparse adapter folder (written atomically)")
    )
    dtype: str = option(
        "auto",
        choices=DTYPES,
        group="outputs (at least one)",
        help=("--out: dtype of the written weights and of config.json; 'auto' keeps each base tensor's dtype"),
    )
    value_dtype: str = option(
        "float32",
        choices=ADAPTER_VALUE_DTYPES,
        group="outputs (at least one)",
        help=("--out-adapter: dtype of the stored values (float32: exact)"),
    )
    overwrite: bool = option(False, help="replace the output folders if they exist")

    def validate(self) -> None:
        if not (self.out or self.out_adapter):
            fail("merge: pass --out (a model folder), --out-adapter (a merged adapter) or both (out / out_adapter)")
        if self.from_record is None and (self.base is None or not self.adapters):
            fail("merge: pass a base (--base) and at least one adapter (--adapter), or --from-record FILE")
        super().validate()
