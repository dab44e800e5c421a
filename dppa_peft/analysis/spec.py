"""``InspectSpec``: what ``dppa-peft inspect`` shows (an adapter's density plan, or a method's plan on a pair)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.spec import Source, Spec, fail, option
from ..delta.scope import DEFAULT_SCOPE_PATTERN
from ..prune.spec import canonical_method, method_names, method_params, methods


@dataclass(frozen=True, kw_only=True)
class InspectSpec(Spec):
    """An adapter's recorded density plan, or the plan a method would use on a base/fine-tune pair."""

    key: ClassVar[str] = "inspect"
    adapter: Source | None = option(None, positional=True, help="adapter folder or Hub id (or --base and --finetuned)")
    base: Source | None = option(None, group="plan of a method", help="base model: folder or Hub id")
    finetuned: Source | None = option(None, group="plan of a method", help="fine-tuned model: folder or Hub id")
    method: str = option("dp", choices=method_names, group="plan of a method", help="method whose plan to show")
    rate: float = option(0.9, group="plan of a method", help="target pruning rate")
    params: dict[str, Any] = option(
        default_factory=dict,
        group="method",
        help="the method's hyperparameters",
        params_of=methods,
        resolve=canonical_method,
        selector="method",
        choices_all=method_names,
    )
    scope_pattern: str = option(DEFAULT_SCOPE_PATTERN, group="plan of a method", help="regex selecting pruned tensors")
    no_stats: bool = option(False, group="plan of a method", help="skip the delta statistics pass")
    png: str | None = option(None, help="write the kept-density heatmap to this PNG file")

    def validate(self) -> None:
        pair = (self.base is not None, self.finetuned is not None)
        if (self.adapter is not None) == any(pair):
            fail("inspect: pass either an ADAPTER or both --base and --finetuned")
        if any(pair) and not all(pair):
            fail("inspect: --base and --finetuned go together")
        self._set(params=dataclasses.asdict(method_params(self.method, self.params, f"{self.key}.params")))
