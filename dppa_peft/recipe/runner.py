"""YAML recipes: prune several fine-tunes of one base, then merge them — one file, one command, resumable.

```yaml
base: meta-llama/Llama-2-7b-hf          # folder or Hub id, or {ref: ..., revision: ...}
output_dir: llama2-dppa                  # adapters go to <output_dir>/<domain>, the merge to <output_dir>/merged
prune: {method: dp, rate: 0.9, params: {dp_variant: code, lam: 0.08}}   # any PruneSpec field but base/finetuned/out
finetunes: {math: GAIR/Abel-7B-001, finance: AdaptLLM/finance-chat}
merge: {mode: ties, weights: {math: 1.0}, params: {density: 0.5}}   # optional; MergeSpec fields but base/adapters/out
```

A recipe is a list of specs (one ``PruneSpec`` per fine-tune, then a ``MergeSpec``), built with the specs' strict
reader: an unknown key at any level, or a wrong type, is an error naming its path (``prune.params.methd``). Every
output stays inside ``output_dir``; every input is opened before the first prune; a rerun skips the steps whose
output is complete and whose spec has not changed (recorded in ``<output_dir>/recipe-state.json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.spec import Source, Spec, SpecError, convert, option
from ..merge.spec import MergeSpec
from ..prune.spec import PruneSpec
from .spec import RunSpec

STATE_FILE = "recipe-state.json"
MERGED = "merged"
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, kw_only=True)
class RecipeFile(Spec):
    """The top level of a recipe file (the ``prune`` and ``merge`` mappings are read by their specs)."""

    key = "recipe"
    base: Source = option(help="base model of every fine-tune")
    output_dir: str = option(help="folder of every output, relative to the recipe file")
    finetunes: dict[str, Source] = option(help="domain name -> fine-tuned model")
    prune: dict[str, Any] = option(default_factory=dict, help="PruneSpec fields shared by every fine-tune")
    merge: dict[str, Any] | None = option(None, help="MergeSpec fields; weights as domain -> weight")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: the prune steps (domain -> spec) and the optional merge step."""

    path: Path
    output_dir: Path
    prunes: dict[str, PruneSpec]
    merge: MergeSpec | None = None
    steps: dict[str, Spec] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        """Read and validate a recipe file (nothing is opened or written yet)."""
        path = Path(path)
        return cls.from_dict(_read_yaml(path), path)

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> Recipe:
        top = convert(data, RecipeFile, "recipe") if isinstance(data, dict) else _not_a_mapping(path)
        if not top.finetunes:
            raise SpecError("recipe.finetunes: map at least one domain name to a model")
        output_dir = (path.resolve().parent / top.output_dir).resolve()
        prunes = {domain: _prune_step(top, domain, source, output_dir) for domain, source in top.finetunes.items()}
        merge = None if top.merge is None else _merge_step(top, output_dir)
        steps: dict[str, Spec] = {f"prune {d}": spec for d, spec in prunes.items()}
        if merge is not None:
            steps["merge"] = merge
        return cls(path=path, output_dir=output_dir, prunes=prunes, merge=merge, steps=steps)


def _not_a_mapping(path: Path) -> Any:
    raise SpecError(f"{path}: a recipe is a YAML mapping with keys base, output_dir, finetunes, prune, merge")


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise FileNotFoundError(f"cannot read recipe {path}: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(f"{where}: YAML syntax error: {problem}") from None


def _inside(output_dir: Path, name: str, what: str) -> Path:
    """``output_dir/name`` for a plain folder name; anything that could leave ``output_dir`` is refused."""
    if not DOMAIN_NAME.match(name) or name == MERGED:
        raise SpecError(
            f"{what}: {name!r} is not a usable domain name (letters, digits, '.', '_', '-'; not "
            f"{MERGED!r}); it names the output folder inside output_dir"
        )
    target = (output_dir / name).resolve()
    if target.parent != output_dir:
        raise SpecError(f"{what}: {name!r} would write outside output_dir {output_dir}")
    return target


def _prune_step(top: RecipeFile, domain: str, source: Source, output_dir: Path) -> PruneSpec:
    out = _inside(output_dir, domain, f"recipe.finetunes.{domain}")
    spec: PruneSpec = PruneSpec.from_dict(top.prune, "prune", base=top.base, finetuned=source, out=str(out))
    return spec


def _merge_step(top: RecipeFile, output_dir: Path) -> MergeSpec:
    options = dict(top.merge or {})
    weights = convert(options.pop("weights", {}) or {}, dict[str, float], "merge.weights")
    unknown = sorted(set(weights) - set(top.finetunes))
    if unknown:
        raise SpecError(f"merge.weights.{unknown[0]}: unknown domain; the domains are {sorted(top.finetunes)}")
    domains = list(top.finetunes)
    adapters = [str(_inside(output_dir, d, f"recipe.finetunes.{d}")) for d in domains]
    spec: MergeSpec = MergeSpec.from_dict(
        options,
        "merge",
        base=top.base,
        adapters=adapters,
        weights=[weights.get(d, 1.0) for d in domains],
        out=str(output_dir / MERGED),
        out_adapter=None,
        from_record=None,
    )
    return spec


def check_inputs(recipe: Recipe) -> None:
    """Open every input pair and check the objective inputs before the first prune."""
    from ..delta.pair import open_pair

    for spec in recipe.prunes.values():
        spec.check_search_inputs()
        open_pair(spec.base, spec.finetuned, spec.scope_pattern)


def _load_state(output_dir: Path) -> dict[str, Any]:
    path = output_dir / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return state if isinstance(state, dict) else {}


def _save_state(output_dir: Path, state: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, output_dir / STATE_FILE)


def _complete(spec: Spec) -> bool:
    out = Path(getattr(spec, "out"))
    if isinstance(spec, PruneSpec):
        return (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    return (out / "config.json").is_file() and any(out.glob("*.safetensors"))


def run_recipe(
    recipe: Recipe, overwrite: bool = False, command: str | None = None, progress: bool = True
) -> Iterator[str]:
    """Run the recipe's steps, yielding one line per step; finished, unchanged steps are skipped."""
    from ..merge.api import merge
    from ..prune.api import prune, prune_and_amplify

    check_inputs(recipe)
    state = {} if overwrite else _load_state(recipe.output_dir)
    redone = False
    for name, spec in recipe.steps.items():
        record = spec.to_dict()
        if not overwrite and state.get(name) == record and _complete(spec) and not (redone and name == "merge"):
            yield f"{name}: done earlier, skipped ({spec.out})"  # type: ignore[attr-defined]
            continue
        if overwrite:
            spec = dataclasses.replace(spec, overwrite=True)  # type: ignore[call-arg]
        if isinstance(spec, PruneSpec):
            run = prune_and_amplify if spec.amplify else prune
            summary = run(spec, command=command, progress=progress)[1]
            yield f"{name.removeprefix('prune ')}: {summary.line()}"
        else:
            assert isinstance(spec, MergeSpec)
            merge(spec, progress=progress, command=command)
            yield f"merged ({spec.mode}) -> {spec.out}"
        redone = True
        state[name] = record
        _save_state(recipe.output_dir, state)


def with_device(recipe: Recipe, device: str | None = None, dtype: str | None = None) -> Recipe:
    """``recipe`` with every step's ``device`` (and the prune steps' ``dtype``) replaced, where given."""
    if device is None and dtype is None:
        return recipe

    def moved(step: Spec) -> Any:
        updates: dict[str, Any] = {} if device is None else {"device": device}
        if dtype is not None and isinstance(step, PruneSpec):
            updates["dtype"] = dtype
        return dataclasses.replace(step, **updates)

    prunes = {domain: moved(step) for domain, step in recipe.prunes.items()}
    merge = None if recipe.merge is None else moved(recipe.merge)
    steps: dict[str, Spec] = {f"prune {d}": step for d, step in prunes.items()}
    if merge is not None:
        steps["merge"] = merge
    return dataclasses.replace(recipe, prunes=prunes, merge=merge, steps=steps)


def run(spec: RunSpec, command: str | None = None, progress: bool = True) -> Iterator[str]:
    """``dppa-peft run``: load and validate ``spec.recipe`` (before any work; ``spec.device``/``dtype`` replace
    the steps' own), then run it (see ``run_recipe``)."""
    if spec.device is not None:
        from ..core.devices import resolve_device

        resolve_device(spec.device)  # an unknown or absent device is an error before any step
    recipe = with_device(Recipe.load(spec.recipe), spec.device, spec.dtype)
    return run_recipe(recipe, overwrite=spec.overwrite, command=command, progress=progress)
