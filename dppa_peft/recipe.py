"""YAML recipes: prune several fine-tunes of one base, then merge them — one file, one command.

```yaml
base: meta-llama/Llama-2-7b-hf          # folder or Hub id
output_dir: llama2-dppa                  # adapters go to <output_dir>/<domain>, the merge to <output_dir>/merged
prune: {method: dp, rate: 0.9, params: {dp_variant: code, lam: 0.08}}
finetunes: {math: GAIR/Abel-7B-001, finance: AdaptLLM/finance-chat}
merge: {mode: sum, weights: {math: 1.0, finance: 1.0}}   # optional; options: {density: 0.5} for modes that take it
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .merge import create_mode, merge_to_folder
from .methods import METHODS
from .pipeline import PruneSummary, prune

RECIPE_KEYS = {"base", "output_dir", "prune", "finetunes", "merge"}


@dataclass(frozen=True)
class Recipe:
    """A validated recipe (see the module docstring for the YAML form)."""

    base: str
    output_dir: Path
    finetunes: dict[str, str]
    method: str = "dp"
    rate: float = 0.9
    params: dict[str, Any] = field(default_factory=dict)
    merge_mode: str | None = None
    merge_options: dict[str, Any] = field(default_factory=dict)  # the merge mode's options, e.g. density
    merge_weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Recipe":
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe is a YAML mapping with keys {sorted(RECIPE_KEYS)}")
        unknown = sorted(set(data) - RECIPE_KEYS)
        missing = sorted({"base", "output_dir", "finetunes"} - set(data))
        if unknown or missing:
            raise ValueError(f"{path}: unknown keys {unknown}, missing keys {missing}; expected {sorted(RECIPE_KEYS)}")
        prune_cfg, merge_cfg = data.get("prune") or {}, data.get("merge")
        method = prune_cfg.get("method", "dp")
        if method not in METHODS:
            raise ValueError(f"{path}: unknown method {method!r}; choose one of {sorted(METHODS)}")
        merge_options = dict((merge_cfg or {}).get("options") or {})
        if merge_cfg is not None:
            try:  # the mode and its options are checked before any work
                create_mode(merge_cfg.get("mode", "sum"), **merge_options)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: merge: {err}") from None
        finetunes = {str(k): str(v) for k, v in (data["finetunes"] or {}).items()}
        if not finetunes:
            raise ValueError(f"{path}: 'finetunes' must map at least one domain name to a model")
        weights = {str(k): float(v) for k, v in ((merge_cfg or {}).get("weights") or {}).items()}
        if set(weights) - set(finetunes):
            raise ValueError(f"{path}: merge weights name unknown domains {sorted(set(weights) - set(finetunes))}")
        base_dir = Path(path).resolve().parent
        return cls(base=str(data["base"]), output_dir=(base_dir / str(data["output_dir"])), finetunes=finetunes,
                   method=method, rate=float(prune_cfg.get("rate", 0.9)), params=dict(prune_cfg.get("params") or {}),
                   merge_mode=None if merge_cfg is None else merge_cfg.get("mode", "sum"), merge_weights=weights,
                   merge_options=merge_options)


def run_recipe(recipe: Recipe, overwrite: bool = False, command: str | None = None,
               progress: bool = True) -> dict[str, PruneSummary]:
    """Prune every fine-tune into ``<output_dir>/<domain>`` and, if asked, merge them into ``<output_dir>/merged``."""
    summaries = {}
    for domain, finetuned in recipe.finetunes.items():
        _, summaries[domain] = prune(recipe.base, finetuned, recipe.output_dir / domain, method=recipe.method,
                                     rate=recipe.rate, overwrite=overwrite, progress=progress, command=command,
                                     **recipe.params)
    if recipe.merge_mode is not None:
        domains = list(recipe.finetunes)
        merge_to_folder(recipe.base, [recipe.output_dir / d for d in domains], recipe.output_dir / "merged",
                        weights=[recipe.merge_weights.get(d, 1.0) for d in domains], mode=recipe.merge_mode,
                        overwrite=overwrite, progress=progress, command=command, **recipe.merge_options)
    return summaries
