"""``PruneSpec``: what ``dppa-peft prune`` and ``dppa_peft.prune`` do (with ``amplify``: DPPA, prune then DPA)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..amplify.spec import (
    PARTITION_HELP,
    AmplifyParams,
    LearnParams,
    ObjectiveParams,
    check_learn,
    dpa_option,
    split_dpa_options,
)
from ..core.choices import DTYPES, LEARNED, OUTSIDE_SCOPE_MODES
from ..core.spec import RunOptions, Source, Spec, changed, entry_params, fail, option
from ..core.validate import check_finite_params
from ..delta.scope import DEFAULT_SCOPE_PATTERN

DPPA = "dppa"  # method alias: dp, then DPA (``amplify=True``)


def method_names() -> list[str]:
    """The registered pruning methods (imports the methods package, not torch)."""
    from ..methods.registry import METHODS

    return sorted(METHODS)


def methods() -> dict[str, Any]:
    """The registered pruning methods by name."""
    from ..methods.registry import METHODS

    return dict(sorted(METHODS.items()))


def canonical_method(name: str) -> str:
    return "dp" if name == DPPA else name


def prune_method_choices() -> list[str]:
    return [*method_names(), DPPA]


def method_params(method: str, params: Mapping[str, Any], path: str = "params") -> Any:
    """Method ``method``'s parameter dataclass built from ``params``; unknown names are errors."""
    from ..methods.registry import get_method

    chosen = entry_params(get_method, "method", method, "parameter", params, path)
    check_finite_params(chosen, f"method {method!r}")
    return chosen


def _check_partition_rates(spec: Spec, rate: float) -> None:
    rates = getattr(spec, "partition_rates")
    if rates is None:
        return
    from ..methods.partitions import check_partition_rates

    try:
        check_partition_rates(rates, rate)
    except ValueError as err:
        fail(f"{spec.key}.partition_rates: {err}")


@dataclass(frozen=True, kw_only=True)
class PruneSpec(RunOptions):
    """``finetuned − base`` pruned with ``method`` at ``rate`` into a sparse delta adapter folder ``out``."""

    key: ClassVar[str] = "prune"
    base: Source = option(help="base model: folder or Hub id")
    finetuned: Source = option(help="fine-tuned model of the same base: folder or Hub id")
    out: str = option(help="output adapter folder (written atomically)")
    base_model_id: str | None = option(
        None,
        metavar="HUB_ID",
        help=(
            "the Hub id of a --base given as a local folder (checked against the Hub by sampled weights when it is "
            "reachable; never downloads): recorded in the adapter and its card"
        ),
    )
    method: str = option(
        "dp",
        choices=prune_method_choices,
        help=(f"pruning method; '{DPPA}' = dp, then DPA (same as --method dp --amplify)"),
    )
    rate: float = option(0.9, help="target pruning rate alpha in [0, 1]; 0.9 keeps 10% of each pruned delta")
    params: dict[str, Any] = option(
        default_factory=dict,
        group="method",
        help=("the method's hyperparameters (the options listed under each method)"),
        params_of=methods,
        resolve=canonical_method,
        selector="method",
        choices_all=prune_method_choices,
    )
    scope_pattern: str = option(
        DEFAULT_SCOPE_PATTERN,
        group="scope and storage",
        help=(
            "regex with named groups 'block' and 'module' selecting the pruned tensors (2-D weights inside numbered "
            "decoder blocks by default)"
        ),
    )
    outside_scope: str = option(
        "dense",
        choices=OUTSIDE_SCOPE_MODES,
        group="scope and storage",
        help=(
            "changed tensors outside the scope (embeddings, lm_head, norms, biases): keep 'dense', prune with "
            "'magnitude' at the base rate, or 'drop'"
        ),
    )
    value_dtype: str = option(
        "auto",
        choices=DTYPES,
        group="scope and storage",
        help=("dtype of stored values; 'auto' keeps the fine-tune's dtype"),
    )
    partition_rates: list[float] | None = dpa_option(None, help=PARTITION_HELP)
    amplify: bool = option(
        False,
        help=(
            "after pruning, run DPA: store partition ids and search one factor per partition (the DPA options below)"
        ),
    )
    dpa: AmplifyParams = option(default_factory=AmplifyParams, help="DPA search settings")
    dpa_objective: ObjectiveParams = option(default_factory=ObjectiveParams, help="DPA objective settings")
    learn: LearnParams = option(default_factory=LearnParams, help="learned amplification settings")
    overwrite: bool = option(False, help="replace --out if it exists")

    def validate(self) -> None:
        if self.method == DPPA:
            self._set(method="dp", amplify=True)
        if self.dpa.search == LEARNED:
            self._set(amplify=True)
        if not (isinstance(self.rate, (int, float)) and 0.0 <= self.rate <= 1.0):
            fail(f"prune.rate: pruning rate must be in [0, 1], got {self.rate!r}; e.g. 0.9 keeps 10% of each delta")
        self._set(
            base=Source.of(self.base),
            finetuned=Source.of(self.finetuned),
            out=str(self.out),
            rate=float(self.rate),
            params=dataclasses.asdict(self.method_params()),
        )
        _check_partition_rates(self, self.rate)
        check_learn(self)
        if not self.amplify:
            given = changed(self.dpa) + changed(self.dpa_objective)
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                fail(f"{flags} apply only to DPA: add --amplify (amplify=True) or use --method {DPPA}")

    def check_search_inputs(self) -> None:
        """With DPA and no given factors: the inputs the named objective needs (before any pruning)."""
        if self.amplify and self.dpa.factors is None and self.dpa.search != LEARNED:
            self.dpa_objective.require_inputs(self.finetuned)

    def method_params(self) -> Any:
        """The method's parameter dataclass (unknown names and bad values are errors)."""
        return method_params(self.method, self.params, f"{self.key}.params")

    @classmethod
    def build(
        cls,
        base: Any,
        finetuned: Any,
        out: Any,
        *,
        revision: str | None = None,
        base_revision: str | None = None,
        **options: Any,
    ) -> PruneSpec:
        """The spec of the keyword API: spec fields, plus any method parameter and DPA option by name."""
        fields = {f.name for f in dataclasses.fields(cls)}
        spec_options = {k: options.pop(k) for k in list(options) if k in fields}
        nested, params = split_dpa_options(options)
        return cls(
            base=Source.of(base, base_revision),
            finetuned=Source.of(finetuned, revision),
            out=str(out),
            params={**spec_options.pop("params", {}), **params},
            **nested,
            **spec_options,
        )
