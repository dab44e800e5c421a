"""``RunSpec``: ``dppa-peft run RECIPE`` (the recipe's steps are ``PruneSpec`` and ``MergeSpec``, see ``runner``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.choices import DTYPES
from ..core.spec import Spec, option


@dataclass(frozen=True, kw_only=True)
class RunSpec(Spec):
    """A YAML recipe run step by step (its prune and merge steps are ``PruneSpec`` / ``MergeSpec``, see recipe.py)."""

    key: ClassVar[str] = "run"
    recipe: str = option(positional=True, metavar="RECIPE", help="recipe YAML file")
    overwrite: bool = option(False, help="redo every step and replace existing outputs")
    device: str | None = option(
        None,
        group="device",
        help="run every step on this device (cpu, cuda, cuda:1, auto), in place of the recipe's prune/merge device",
    )
    dtype: str | None = option(
        None,
        choices=DTYPES,
        group="device",
        help="the dtype the prune steps load models in, in place of the recipe's prune dtype",
    )

    def validate(self) -> None:
        self._set(recipe=str(self.recipe))
