"""One typed, frozen spec per operation: what to prune, amplify, merge or evaluate, and how.

The specs are the single place where options, their defaults, their allowed values and their validation live:

- the Python API takes them (``prune(PruneSpec(...))``; the keyword forms ``prune(base, finetuned, out, rate=0.8)``
  build the same spec with :meth:`Spec.build`);
- the CLI generates its options from their fields (``cli/options.py``: help, choices, group from field metadata);
- recipes are lists of them (:meth:`Spec.from_dict` rejects unknown keys and wrong types, naming the key's path).

A spec validates itself when built (``__post_init__``), before any file is read, so a typo fails at once. This
module imports no torch, transformers or peft: choices that come from a registry (pruning methods, merge modes) are
looked up lazily, and the registries' modules import torch only when a tensor is touched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .core.choices import (
    BACKENDS,
    DEFAULT_TEXT_FIELD,
    DEFAULT_TOL,
    DPA_METHODS,
    DEMO_SIZES,
    DTYPES,
    EXPORT_FORMATS,
    FULL_VOCAB_LIMIT,
    GRANULARITIES,
    LEARNED,
    OBJECTIVES,
    OUTSIDE_SCOPE_MODES,
    PARTITION_COMBINE_MODES,
    SEARCHES,
    TEACHER_TOP_K,
)
from .delta.scope import DEFAULT_SCOPE_PATTERN

from .core.errors import UserError
from .core.validate import check_finite_params, finite_numbers

MISSING = dataclasses.MISSING

DPPA = "dppa"  # method alias: dp, then DPA (``amplify=True``)
AMPLIFIED_SUFFIX = "-dpa"  # default output of ``amplify ADAPTER``: ADAPTER-dpa next to it


def method_names() -> list[str]:
    """The registered pruning methods (imports the methods package, not torch)."""
    from .methods.registry import METHODS

    return sorted(METHODS)


def methods() -> dict[str, Any]:
    """The registered pruning methods by name."""
    from .methods.registry import METHODS

    return dict(sorted(METHODS.items()))


def canonical_method(name: str) -> str:
    return "dp" if name == DPPA else name


def prune_method_choices() -> list[str]:
    return [*method_names(), DPPA]


def option(
    default: Any = MISSING,
    *,
    help: str,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    group: str | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    positional: bool = False,
    cli: bool = True,
    default_factory: Callable[[], Any] | Any = MISSING,
    **registry: Any,
) -> Any:
    """A spec field with its CLI metadata: ``help``, allowed ``choices`` (checked on build), option ``group``.

    ``flag`` overrides the generated ``--field-name``; ``positional`` makes it a positional argument; ``cli=False``
    keeps the field out of the command line (set by the program). A field holding the parameters of a registry
    entry (a pruning method's, a merge mode's) names the registry: ``params_of`` (name -> class with ``Params`` and
    ``summary``), ``resolve`` (an alias to its canonical name) and ``selector`` (the field that picks the entry).
    """
    metadata = {
        "help": help,
        "choices": choices,
        "group": group,
        "flag": flag,
        "metavar": metavar,
        "positional": positional,
        "cli": cli,
        **registry,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _group_option(group: str) -> Callable[..., Any]:
    """:func:`option` with ``group`` set, for a spec class whose fields share one option group."""
    return functools.partial(option, group=group)


dpa_option = _group_option("DPA search")
objective_option = _group_option("DPA objective")
learn_option = _group_option("learned amplification (--search learned)")
LEARN_DENSE_HELP = (
    "also learn a factor per row of the tensors stored dense outside the pruning scope (embeddings, lm_head, norms; "
    "one per 1-D tensor); needs --learn-granularity row or tensor. Default: off for one adapter (prune, amplify), on "
    "for merge --mode learned (--no-learn-dense adds them with factor 1); adamerging does not take it"
)


def choices_of(f: dataclasses.Field) -> list[Any] | None:
    """The allowed values of a field (resolving registry lookups), or None when any value goes."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


class SpecError(UserError):
    """A spec was built with a bad value; the message names the field (its path) and the allowed values."""


def _fail(message: str) -> typing.NoReturn:
    raise SpecError(message)


def torch_dtype(name: str) -> Any:
    """The torch dtype of a ``DTYPES`` name; None for 'auto' (keep the checkpoint's)."""
    import torch

    if name not in DTYPES:
        _fail(f"dtype {name!r} is not one of {list(DTYPES)}")
    return None if name == "auto" else getattr(torch, name)


@dataclass(frozen=True, kw_only=True)
class Spec:
    """Base of every spec: choices checked on build, then the spec's own ``validate``."""

    key: ClassVar[str] = "spec"  # the key of this spec in recipes and messages

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            allowed = choices_of(f)
            value = getattr(self, f.name)
            if allowed is None or value is None:
                continue
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item not in allowed:
                    _fail(f"{self.key}.{f.name}: {item!r} is not one of {allowed}")
        self.validate()

    def validate(self) -> None:
        """Cross-field checks of this spec (override; raise with ``_fail``)."""

    def _set(self, **values: Any) -> None:
        """Normalise fields during ``__post_init__`` (the spec is frozen afterwards)."""
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_dict(cls, data: Any, path: str | None = None, **extra: Any) -> Any:
        """Build from plain data (YAML/JSON); unknown keys and wrong types are errors naming their path."""
        return convert(data, cls, path or cls.key, extra)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back (the merge record, recipes)."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --- plain data -> typed values, with the key's path in every message -------------------------------------------------


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(hint) if a is not Ellipsis)}]"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def convert(value: Any, hint: Any, path: str, extra: Mapping[str, Any] | None = None) -> Any:
    """``value`` as type ``hint``: dataclasses from mappings (strictly), containers item by item."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option_hint in (o for o in options if o is not type(None)):
            try:
                return convert(value, option_hint, path, extra)
            except ValueError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ValueError(errors[0])
        _fail(f"{path}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if hint is Source and isinstance(value, (str, Path)):
            return Source(ref=str(value))
        return _convert_dataclass(value, hint, path, extra or {})
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            _fail(f"{path}: expected a list ({_type_name(hint)}), got {type(value).__name__} {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis] or [Any]
        items = [convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            _fail(f"{path}: expected a mapping ({_type_name(hint)}), got {type(value).__name__} {value!r}")
        key_hint, value_hint = typing.get_args(hint) or (str, Any)
        return {convert(k, key_hint, f"{path}.{k}"): convert(v, value_hint, f"{path}.{k}") for k, v in value.items()}
    return _scalar(value, hint, path)


def _scalar(value: Any, hint: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
    elif hint is type(None):
        if value is None:
            return None
    elif isinstance(value, hint):
        return value
    _fail(f"{path}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _convert_dataclass(value: Any, cls: type, path: str, extra: Mapping[str, Any]) -> Any:
    if not isinstance(value, Mapping):
        _fail(
            f"{path}: expected a mapping with keys {[f.name for f in dataclasses.fields(cls)]}, got "
            f"{type(value).__name__} {value!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    fixed = [k for k in value if k in extra]
    if fixed:
        _fail(f"{path}.{fixed[0]}: set by the recipe, not here")
    unknown = [k for k in value if k not in fields]
    if unknown:
        _fail(f"{path}.{unknown[0]}: unknown key; the keys of {path} are {sorted(fields)}")
    kwargs = dict(extra)
    for key, item in value.items():
        kwargs[key] = convert(item, hints[key], f"{path}.{key}")
    for f in fields.values():  # a registry entry's parameters, read strictly as that entry's Params
        if f.metadata.get("params_of") and f.name in kwargs:
            selector = f.metadata["selector"]
            chosen = kwargs.get(selector, fields[selector].default)
            entries = f.metadata["params_of"]()
            name = f.metadata["resolve"](chosen) if chosen in f.metadata["choices_all"]() else None
            if name is not None and name in entries:
                kwargs[f.name] = dataclasses.asdict(convert(kwargs[f.name], entries[name].Params, f"{path}.{f.name}"))
    missing = [
        n for n, f in fields.items() if n not in kwargs and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        _fail(f"{path}: missing key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        message = str(err)
        _fail(message if message.startswith(path) else f"{path}: {message}")


# --- the specs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Source(Spec):
    """A model or adapter to read: a local folder or a Hub id, and for a Hub id its revision."""

    key: ClassVar[str] = "source"
    ref: str = option(help="local folder or Hub id")
    revision: str | None = option(None, help="Hub revision (branch, tag or commit sha)")

    def validate(self) -> None:
        if not str(self.ref).strip():
            _fail("a model or adapter reference must not be empty; pass a folder or a Hub id")
        self._set(ref=str(self.ref))

    def __str__(self) -> str:
        return self.ref if self.revision is None else f"{self.ref}@{self.revision}"

    @classmethod
    def of(cls, ref: Source | str | Path | Any, revision: str | None = None) -> Source:
        """A Source from a Source, a path or a Hub id (``revision`` applies to the latter two)."""
        if isinstance(ref, Source):
            return ref if revision is None else dataclasses.replace(ref, revision=revision)
        return cls(ref=str(getattr(ref, "directory", ref)), revision=revision)

    @property
    def local_dir(self) -> Path | None:
        """The folder when ``ref`` is an existing local folder."""
        path = Path(self.ref)
        return path if path.is_dir() else None


def _positive(spec: Spec, *names: str, minimum: float = 1) -> None:
    for name in names:
        value = getattr(spec, name)
        if value is not None and value < minimum:
            _fail(f"{spec.key}.{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True, kw_only=True)
class AmplifyParams(Spec):
    """How DPA searches the partition factors (each field is a CLI option of ``prune --amplify`` and ``amplify``)."""

    key: ClassVar[str] = "dpa"
    combine: str = dpa_option(
        "independent",
        choices=PARTITION_COMBINE_MODES,
        help=(
            "how partition factors combine: 'independent' scales each partition by its own factor; 'max' is the "
            "released code (a partition gets the max of its factor and every later one's)"
        ),
    )
    amplify_unpruned: bool = dpa_option(
        False,
        help=(
            "also scale the tensors kept outside the pruning scope (embeddings, norms, lm_head) by the largest factor, "
            "as the released code does"
        ),
    )
    factors: list[float] | None = dpa_option(
        None,
        help=("use these factors (one per partition) and skip the search; no objective is needed"),
    )
    search: str = dpa_option(
        "default",
        choices=SEARCHES,
        help=(
            "'default' = golden-section per partition within --bounds to --tol; 'reference' = the released +0.1 greedy "
            "loop with its quirks; 'learned' = factors per output row (--learn-granularity) learned by KL distillation "
            "from --finetuned on --calibration prompts (any pruning method; one partition unless --partition-rates; "
            "implies --amplify)"
        ),
    )
    dpa_method: int = dpa_option(
        1,
        choices=DPA_METHODS,
        help=(
            "1 = progressive (later partitions absent while a factor is searched), 2 = later partitions present at "
            "factor 1"
        ),
    )
    bounds: list[float] | None = dpa_option(
        None,
        metavar="LO HI",
        help=(
            "default search: interval of every factor (default 0.5 3.0; 0.0 1.2 for methods that already rescale "
            "kept values, like DARE, where DPA reduces)"
        ),
    )
    tol: float = dpa_option(
        DEFAULT_TOL,
        help=(
            "default search: each factor ends within this distance of its optimum for a unimodal objective (sets the "
            "calls per partition: 10 on [0.5, 3.0] at 0.05)"
        ),
    )
    max_calls: int | None = dpa_option(
        None,
        help=("most objective calls in total (default search: what --tol needs; reference loop: 100)"),
    )
    reference_init: list[float] | None = dpa_option(
        None,
        help=("reference search: start factors (default 1.8 then 0 for method 1, 1.8 then 1 for method 2)"),
    )

    def validate(self) -> None:
        check_finite_params(self, "DPA")
        if self.search == LEARNED and (
            self.factors is not None
            or self.bounds is not None
            or self.reference_init is not None
            or self.max_calls is not None
        ):
            _fail(
                "search='learned' learns its factors: factors, bounds, reference_init and max_calls apply to the "
                "default and reference searches only"
            )
        if self.bounds is not None and (len(self.bounds) != 2 or not 0 <= self.bounds[0] < self.bounds[1]):
            _fail(f"dpa.bounds must be two numbers 0 <= LO < HI, got {self.bounds}")
        if self.search == "reference" and self.bounds is not None:
            _fail("dpa.bounds apply to the default search; the reference loop has none (see reference_init)")
        if self.search == "default" and self.reference_init is not None:
            _fail("dpa.reference_init applies to search='reference'; the default search uses bounds")
        if not self.tol > 0:
            _fail(f"dpa.tol must be > 0, got {self.tol}")
        _positive(self, "max_calls")
        if self.factors is not None and any(not (math.isfinite(f) and f >= 0) for f in self.factors):
            _fail(f"dpa.factors must be finite numbers >= 0, got {self.factors}")


@dataclass(frozen=True, kw_only=True)
class ObjectiveParams(Spec):
    """What the DPA search maximises (the provided objectives; the API also takes a callable)."""

    key: ClassVar[str] = "dpa_objective"
    objective: str = objective_option(
        "kl",
        choices=OBJECTIVES,
        help=(
            "'kl' = -KL(dense fine-tune || candidate) of next-token distributions on --calibration prompts (no "
            "labels); 'tasks' = Domain-Ratio (geometric mean of task score / dense score) of lm-eval --tasks on their "
            "dev split"
        ),
    )
    calibration: str | None = objective_option(
        None,
        metavar="FILE",
        help=(
            "kl and learned: calibration prompts, a .jsonl/.json file with a --text-field per line or a plain text file "
            "with one prompt per line"
        ),
    )
    text_field: str = objective_option(
        DEFAULT_TEXT_FIELD,
        help=("the JSON field holding the prompt in a .jsonl/.json --calibration file"),
    )
    continuation_tokens: int = objective_option(
        8,
        help=("kl: greedy tokens the dense fine-tune appends to each prompt; they are scored too"),
    )
    max_length: int = objective_option(128, help=("kl: prompts are cut to max_length - continuation_tokens tokens"))
    batch_size: int = objective_option(8, help="sequences per forward pass (kl) or lm-eval batch size")
    tokenizer: str | None = objective_option(
        None,
        help=("tokenizer folder or Hub id (default: the fine-tuned model's, else the base model's)"),
    )
    tasks: list[str] | None = objective_option(
        None, help=("tasks: lm-eval task (or group) names on a dev split, e.g. demo_math_dev")
    )
    include_path: list[str] | None = objective_option(None, help=("tasks: extra folders with lm-eval task YAMLs"))
    metric: str = objective_option("acc", help="tasks: the lm-eval metric each task reports, e.g. acc")
    limit: int | None = objective_option(None, help="tasks: evaluate at most this many documents per task")
    split: str = objective_option(
        "dev",
        help=("tasks: the name of the split the --tasks read, recorded in the adapter config"),
    )

    def validate(self) -> None:
        _positive(self, "max_length", "batch_size", "limit")
        _positive(self, "continuation_tokens", minimum=0)
        if self.continuation_tokens >= self.max_length:
            _fail(
                f"dpa_objective.continuation_tokens ({self.continuation_tokens}) must be below max_length "
                f"({self.max_length})"
            )

    def require_inputs(self, finetuned: Source | None) -> None:
        """The inputs a search with this objective needs (checked before any pruning)."""
        if finetuned is None:
            _fail(
                f"the {self.objective!r} objective compares against the dense fine-tuned model; pass finetuned "
                "(--finetuned)"
            )
        if self.objective == "kl" and self.calibration is None:
            _fail("the kl objective needs calibration prompts (--calibration FILE)")
        if self.objective == "tasks" and not self.tasks:
            _fail("the tasks objective needs lm-eval task names (--tasks)")


@dataclass(frozen=True, kw_only=True)
class LearnParams(Spec):
    """Settings of learned amplification (used with ``search='learned'``)."""

    key: ClassVar[str] = "learn"
    learn_granularity: str = learn_option(
        "row",
        choices=GRANULARITIES,
        help="what one learned factor covers: 'row' = each output row of each pruned "
        "matrix (per partition), 'tensor' = each pruned tensor, 'partition' = each "
        "DPA partition, 'block' = each decoder block, 'global' = the whole adapter",
    )
    learn_steps: int = learn_option(60, help="Adam steps (one calibration batch per teacher each)")
    learn_lr: float = learn_option(0.2, help="Adam learning rate of the factors (they start at 1)")
    learn_heldout: float = learn_option(
        0.2,
        help=("fraction of the calibration prompts held out for early stopping and the reported KL"),
    )
    learn_eval_every: int = learn_option(10, help="steps between held-out KL evaluations")
    learn_patience: int | None = learn_option(
        None,
        help=(
            "stop after this many held-out evaluations without improvement (default: run every step); the factors "
            "with the lowest held-out KL are kept either way"
        ),
    )
    learn_top_k: int | None = learn_option(
        None,
        help=(
            f"teacher log-probs cached per position (default: the full vocabulary up to {FULL_VOCAB_LIMIT} tokens, "
            f"else the top {TEACHER_TOP_K}, renormalised)"
        ),
    )
    learn_seed: int = learn_option(0, help="seed of the held-out split and the batch order")
    learn_dense: bool = learn_option(False, help=LEARN_DENSE_HELP)

    def validate(self) -> None:
        if self.learn_steps < 0 or self.learn_eval_every < 1:
            _fail(
                f"learn_steps must be >= 0 and learn_eval_every >= 1, got {self.learn_steps} and "
                f"{self.learn_eval_every}"
            )
        if not 0.0 < self.learn_heldout < 1.0:
            _fail(f"learn_heldout must be a fraction in (0, 1), got {self.learn_heldout}")
        if self.learn_lr <= 0 or (self.learn_top_k is not None and self.learn_top_k < 1):
            _fail(f"learn_lr must be > 0 and learn_top_k >= 1, got {self.learn_lr} and {self.learn_top_k}")
        if self.learn_dense and self.learn_granularity not in ("row", "tensor"):
            _fail(
                "learn_dense learns a table per dense tensor: use --learn-granularity row or tensor with it, or "
                "turn it off (drop --learn-dense; --no-learn-dense with merge --mode learned, where it is on by "
                "default)"
            )


def _check_learn(spec: Any) -> None:
    """The learn_* options only with search='learned'."""
    if spec.dpa.search != LEARNED and spec.learn != LearnParams():
        _fail("the learn_* options (--learn-*) apply to search='learned' (--search learned)")


def _check_partition_rates(spec: Spec, rate: float) -> None:
    rates = getattr(spec, "partition_rates")
    if rates is None:
        return
    from .methods.partitions import check_partition_rates

    try:
        check_partition_rates(rates, rate)
    except ValueError as err:
        _fail(f"{spec.key}.partition_rates: {err}")


@dataclass(frozen=True, kw_only=True)
class RunOptions(Spec):
    """Where the work runs (shared by every operation that loads a model)."""

    device: str = option("cpu", group="device", help="device the models run on: cpu, cuda, cuda:1 or auto")
    dtype: str = option(
        "auto", choices=DTYPES, group="device", help=("dtype models are loaded in ('auto': the checkpoint's)")
    )


PARTITION_HELP = (
    "DPA partition boundaries as pruning rates, most important first, ending at the target rate "
    "(default: 0.9 0.8 ... down to the rate; rate 0.9 gives one partition)"
)


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
            _fail(f"prune.rate: pruning rate must be in [0, 1], got {self.rate!r}; e.g. 0.9 keeps 10% of each delta")
        self._set(
            base=Source.of(self.base),
            finetuned=Source.of(self.finetuned),
            out=str(self.out),
            rate=float(self.rate),
            params=dataclasses.asdict(self.method_params()),
        )
        _check_partition_rates(self, self.rate)
        _check_learn(self)
        if not self.amplify:
            given = _changed(self.dpa) + _changed(self.dpa_objective)
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                _fail(f"{flags} apply only to DPA: add --amplify (amplify=True) or use --method {DPPA}")

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


def method_params(method: str, params: Mapping[str, Any], path: str = "params") -> Any:
    """Method ``method``'s parameter dataclass built from ``params``; unknown names are errors."""
    from .methods.registry import get_method

    chosen = _entry_params(get_method, "method", method, "parameter", params, path)
    check_finite_params(chosen, f"method {method!r}")
    return chosen


def _entry_params(
    get: Callable[[str], Any], kind: str, name: str, word: str, params: Mapping[str, Any], path: str
) -> Any:
    """The ``Params`` dataclass of registry entry ``get(name)`` (a ``kind``: method, merge mode) built from
    ``params``; an unknown name, an unknown ``word`` (parameter, option) or a bad value is an error."""
    try:
        cls = get(name).Params
    except ValueError as err:
        _fail(str(err))
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        _fail(f"{path}.{unknown[0]}: {kind} {name!r} has no {word} {unknown[0]!r}; its {word}s are {known or 'none'}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        _fail(f"{path}: {err}")


def _changed(spec: Spec) -> list[str]:
    """The fields of ``spec`` that differ from their defaults."""
    default = type(spec)()
    return [f.name for f in dataclasses.fields(spec) if getattr(spec, f.name) != getattr(default, f.name)]


def split_dpa_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The nested DPA specs (``dpa``, ``dpa_objective``, ``learn``) from flat field names, and the options left
    (method parameters)."""
    nested: dict[str, Any] = {}
    for key, cls in (("dpa", AmplifyParams), ("dpa_objective", ObjectiveParams), ("learn", LearnParams)):
        names = {f.name for f in dataclasses.fields(cls)}
        nested[key] = cls(**{k: options.pop(k) for k in list(options) if k in names})
    return nested, options


@dataclass(frozen=True, kw_only=True)
class AmplifySpec(RunOptions):
    """DPA on an existing adapter: partitions, a factor search, and the amplified adapter written to ``out``."""

    key: ClassVar[str] = "amplify"
    adapter: Source = option(positional=True, help="adapter folder or Hub id (from `dppa-peft prune`)")
    out: str | None = option(
        None, help=f"output adapter folder (default: ADAPTER{AMPLIFIED_SUFFIX} next to a local ADAPTER folder)"
    )
    base: Source | None = option(None, help="base model: folder or Hub id (default: the adapter's base)")
    finetuned: Source | None = option(
        None, help=("the dense fine-tuned model the objective compares with (needed by kl and tasks)")
    )
    partition_rates: list[float] | None = dpa_option(None, help=PARTITION_HELP)
    dpa: AmplifyParams = option(default_factory=AmplifyParams, help="DPA search settings")
    dpa_objective: ObjectiveParams = option(default_factory=ObjectiveParams, help="DPA objective settings")
    learn: LearnParams = option(default_factory=LearnParams, help="learned amplification settings")
    overwrite: bool = option(False, help="replace --out if it exists")

    def validate(self) -> None:
        adapter = Source.of(self.adapter)
        out = self.out
        if out is None:
            if adapter.local_dir is None:
                _fail(
                    f"amplify.out: {adapter.ref} is not a local folder, so there is no default output; pass out (--out)"
                )
            out = str(adapter.local_dir.with_name(adapter.local_dir.name + AMPLIFIED_SUFFIX))
        self._set(
            adapter=adapter,
            out=str(out),
            base=None if self.base is None else Source.of(self.base),
            finetuned=None if self.finetuned is None else Source.of(self.finetuned),
        )
        _check_learn(self)

    def check_search_inputs(self) -> None:
        """Without given factors: the inputs the named objective needs (before any work)."""
        if self.dpa.factors is None and self.dpa.search != LEARNED:
            self.dpa_objective.require_inputs(self.finetuned)

    @classmethod
    def build(
        cls,
        adapter: Any,
        out: Any = None,
        *,
        finetuned: Any = None,
        base: Any = None,
        revision: str | None = None,
        base_revision: str | None = None,
        adapter_revision: str | None = None,
        **options: Any,
    ) -> AmplifySpec:
        """The spec of the keyword API (``revision`` is the fine-tune's, as in ``prune``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        spec_options = {k: options.pop(k) for k in list(options) if k in fields}
        nested, rest = split_dpa_options(options)
        if rest:
            _fail(
                f"amplify: no option named {sorted(rest)}; the options are the fields of AmplifySpec, "
                "AmplifyParams, ObjectiveParams and LearnParams (see `dppa-peft amplify --help`)"
            )
        return cls(
            adapter=Source.of(adapter, adapter_revision),
            out=None if out is None else str(out),
            finetuned=None if finetuned is None else Source.of(finetuned, revision),
            base=None if base is None else Source.of(base, base_revision),
            **nested,
            **spec_options,
        )


def merge_modes() -> dict[str, Any]:
    """The registered merge modes by canonical name (aliases left out)."""
    from .merge.modes import MERGE_MODES

    return {name: cls for name, cls in sorted(MERGE_MODES.items()) if name == cls.name}


def canonical_mode(name: str) -> str:
    from .merge.modes import get_mode

    return str(get_mode(name).name)


def merge_mode_choices() -> list[str]:
    from .merge.modes import MERGE_MODES

    return sorted(MERGE_MODES)


def mode_params(mode: str, params: Mapping[str, Any], path: str = "merge.params") -> Any:
    """Merge mode ``mode``'s parameter dataclass built from ``params``; unknown names are errors."""
    from .merge.modes import get_mode

    return _entry_params(get_mode, "merge mode", mode, "option", params, path)


ADAPTER_VALUE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class MergeSpec(Spec):
    """A base plus N adapters combined by merge ``mode`` into a dense model folder and/or one merged adapter."""

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
            _fail("merge: pass --out (a model folder), --out-adapter (a merged adapter) or both (out / out_adapter)")
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
                _fail(f"merge: --from-record replays the recorded inputs; drop {', '.join(given)}")
            return
        if self.base is None or not adapters:
            _fail("merge: pass a base (--base) and at least one adapter (--adapter), or --from-record FILE")
        weights = finite_numbers(self.weights, "--weight")
        if weights is not None and len(weights) != len(adapters):
            _fail(f"merge.weights: got {len(weights)} weights for {len(adapters)} adapters; pass one per adapter")
        self._set(
            base=Source.of(self.base),
            adapters=adapters,
            weights=weights,
            mode=canonical_mode(self.mode),
            params=dataclasses.asdict(mode_params(self.mode, self.params)),
        )

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
    ) -> MergeSpec:
        """The spec of the keyword API: spec fields, plus the mode's options by name."""
        adapters = list(adapters or [])
        revisions = list(adapter_revisions) if adapter_revisions else [None] * len(adapters)
        if len(revisions) != len(adapters):
            _fail(
                f"merge: got {len(revisions)} adapter revisions for {len(adapters)} adapters; pass one per adapter "
                "('main' for the default branch)"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        spec_options = {k: options.pop(k) for k in list(options) if k in fields}
        if "dtype" in spec_options:  # a torch dtype, a name or None
            dtype = spec_options["dtype"]
            spec_options["dtype"] = "auto" if dtype is None else str(dtype).removeprefix("torch.")
        return cls(
            base=Source.of(base, revision),
            out=None if out is None else str(out),
            adapters=[Source.of(a, r) for a, r in zip(adapters, revisions)],
            params={**spec_options.pop("params", {}), **options},
            **spec_options,
        )


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
            _fail("inspect: pass either an ADAPTER or both --base and --finetuned")
        if any(pair) and not all(pair):
            _fail("inspect: --base and --finetuned go together")
        self._set(params=dataclasses.asdict(method_params(self.method, self.params, f"{self.key}.params")))


@dataclass(frozen=True, kw_only=True)
class Domain(Spec):
    """An evaluation domain: its dense fine-tune and the lm-eval tasks that measure it."""

    key: ClassVar[str] = "domain"
    name: str = option(help="domain name")
    finetuned: Source = option(help="the domain's dense fine-tune")
    tasks: tuple[str, ...] = option(help="lm-eval tasks of the domain")

    def validate(self) -> None:
        self._set(finetuned=Source.of(self.finetuned), tasks=tuple(self.tasks))
        if not self.tasks:
            _fail(f"eval: no tasks for domain {self.name!r}; pass --tasks {self.name}=TASK[,TASK]")


LM_EVAL = "lm-eval (device, dtype, batch size, few-shot, stderr, backend)"
lm_eval_option = _group_option(LM_EVAL)


@dataclass(frozen=True, kw_only=True)
class EvalOptions(Spec):
    """How ``dppa-peft eval`` runs lm-eval: backend, device, dtype, batch size, few-shot, limit, stderr."""

    key: ClassVar[str] = "lm_eval"
    backend: str = lm_eval_option(
        "hf",
        choices=BACKENDS,
        help=(
            "lm-eval backend: 'hf' (adapters merged into the base at load, in memory) or 'vllm' (lm-eval's vLLM backend "
            "on a merged export written once per variant; needs the vllm extra and a GPU)"
        ),
    )
    device: str = lm_eval_option("cpu", help="torch device for the hf backend: cpu, cuda, cuda:1, ...")
    dtype: str = lm_eval_option("auto", choices=DTYPES, help="model dtype")
    device_map: str | None = lm_eval_option(
        None,
        help=("hf backend: accelerate device map for big models, e.g. 'auto' (lm-eval's parallelize=True)"),
    )
    batch_size: int = lm_eval_option(16, help="lm-eval batch size")
    num_fewshot: int | None = lm_eval_option(
        None, help=("few-shot examples per prompt (default: the task's own setting)")
    )
    limit: float | None = lm_eval_option(
        None,
        help=("evaluate only the first N examples of each task (a fraction < 1: that share of each task)"),
    )
    bootstrap_iters: int = lm_eval_option(
        1000,
        help=(
            "bootstrap iterations for the standard errors lm-eval reports (mean metrics use a closed form); 0 = no "
            "stderr"
        ),
    )
    metric: str = lm_eval_option("acc", help="metric reported per task")
    keep_merged: bool = lm_eval_option(
        False,
        help=(
            "vllm backend: keep the merged model folders (in OUT-merged/, next to OUT) instead of removing each after "
            "use"
        ),
    )
    model_args: str | None = lm_eval_option(
        None,
        help=(
            "extra lm-eval model_args for every model, KEY=VALUE[,KEY=VALUE] (e.g. "
            "gpu_memory_utilization=0.8,tensor_parallel_size=2 for vllm, max_cpu_memory=8GB for hf)"
        ),
    )

    def validate(self) -> None:
        from .evaluation.backends import parse_model_args

        if self.batch_size < 1:
            _fail(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            _fail(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and not self.limit > 0:
            _fail(f"--limit must be > 0, got {self.limit}")
        if self.bootstrap_iters < 0:
            _fail(f"--bootstrap-iters must be >= 0, got {self.bootstrap_iters}")
        if self.keep_merged and self.backend != "vllm":
            _fail("--keep-merged applies to --backend vllm (the hf backend writes no merged folders)")
        if self.device_map and self.backend != "hf":
            _fail("--device-map applies to --backend hf (vLLM places the model itself)")
        parse_model_args(self.model_args)  # a syntax error shows before any work

    @property
    def lm_eval_limit(self) -> int | float | None:
        """lm-eval's ``limit``: a count N >= 1 as an int, a fraction below 1 as is."""
        if self.limit is None:
            return None
        return int(self.limit) if self.limit >= 1 else self.limit


@dataclass(frozen=True, kw_only=True)
class EvalSpec(Spec):
    """Evaluate the base, each domain's dense fine-tune, and pruned or merged adapters; write the report to ``out``."""

    key: ClassVar[str] = "eval"
    base: Source = option(help="base model: local folder or Hub id")
    domains: list[Domain] = option(cli=False, help="the domains (CLI: --domain NAME=FINETUNED, --tasks NAME=TASKS)")
    adapters: list[tuple[str, Source]] = option(
        default_factory=list,
        cli=False,
        help=("pruned adapters as (domain, adapter) pairs (CLI: --adapter NAME=ADAPTER)"),
    )
    merges: list[dict[str, Source]] = option(
        default_factory=list,
        cli=False,
        help=("merged variants, each domain -> adapter (CLI: --merge NAME=ADAPTER[,NAME=ADAPTER...])"),
    )
    merge_mode: str = option("sum", choices=merge_mode_choices, help="merge mode of every --merge")
    include_path: list[str] = option(
        default_factory=list,
        cli=False,
        help=("extra folders of lm-eval task YAMLs (the package's tasks are always included)"),
    )
    out: str = option(help="report folder (replaced atomically)")
    lm_eval: EvalOptions = option(default_factory=EvalOptions, help="how lm-eval runs")

    def validate(self) -> None:
        if not self.domains:
            _fail("eval.domains: declare at least one domain (--domain NAME=FINETUNED with --tasks NAME=TASKS)")
        labels = [d.name for d in self.domains]
        if len(set(labels)) != len(labels):
            _fail(f"eval.domains: duplicate domain names {labels}")
        named = {name for name, _ in self.adapters} | {name for merge in self.merges for name in merge}
        unknown = sorted(named - set(labels))
        if unknown:
            _fail(f"eval: adapters name unknown domain(s) {unknown}; declare them with --domain NAME=FINETUNED")
        self._set(
            base=Source.of(self.base),
            out=str(self.out),
            adapters=[(name, Source.of(ref)) for name, ref in self.adapters],
            merges=[{name: Source.of(ref) for name, ref in merge.items()} for merge in self.merges],
        )


SUPERTUNING = "supertuning"  # the export format that needs the base (stock PEFT's sparse tuner)


def _check_repo_id(spec: Spec, repo_id: str) -> None:
    if not repo_id.strip() or repo_id.count("/") > 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        _fail(f"{spec.key}.repo_id: {repo_id!r} is not a Hub repo id like 'user/name'")


@dataclass(frozen=True, kw_only=True)
class PushSpec(Spec):
    """Publish an adapter on the Hub as ONE commit (adapter files and a fresh card), or its stock-PEFT export."""

    key: ClassVar[str] = "push"
    adapter: Source = option(
        positional=True, metavar="DIR", help="adapter folder written by `dppa-peft prune` (or a Hub id)"
    )
    repo_id: str = option(positional=True, metavar="REPO_ID", help="target Hub repo, e.g. 'user/llama2-math-dp90'")
    private: bool = option(False, help="create the repo private (refused if the repo already exists and is public)")
    revision: str | None = option(None, help="branch to commit to (created from main if new; default: main)")
    commit_message: str | None = option(None, help="commit message (default: names the method and rate)")
    create_pr: bool = option(False, help="open a pull request against --revision instead of committing to it")
    export_format: str = option(
        "sparse-delta",
        choices=EXPORT_FORMATS,
        help=(
            "'sparse-delta' (this package's compact format; loading needs `import dppa_peft`) or 'supertuning' "
            "(PEFT's built-in sparse tuner: loads with stock PEFT and transformers, larger; needs the base checkpoint)"
        ),
    )
    base: Source | None = option(
        None,
        help=(
            "with --export-format supertuning: the adapter's base model, folder or Hub id (default: the base recorded "
            "in the adapter)"
        ),
    )
    base_model_id: str | None = option(
        None,
        metavar="HUB_ID",
        help=(
            "the Hub id of the base when the adapter was pruned from a local copy (checked against the Hub by sampled "
            "weights when the local base is still there): the pushed config and card name the base by it, so Hub "
            "users can load the adapter"
        ),
    )
    eval_results: str | None = option(
        None,
        metavar="JSON",
        help="lm-eval results JSON (as written by dppa-lm-eval --output_path) to put in the card's model-index",
    )

    def validate(self) -> None:
        self._set(adapter=Source.of(self.adapter), base=None if self.base is None else Source.of(self.base))
        _check_repo_id(self, self.repo_id)
        if self.base is not None and self.export_format != SUPERTUNING:
            _fail("push.base: --base only applies to --export-format supertuning (the export needs the base)")
        if self.base_model_id is not None:
            _check_repo_id(self, self.base_model_id)


@dataclass(frozen=True, kw_only=True)
class ExportSpec(Spec):
    """An adapter written in another format to a local folder: stock PEFT's SUPERTUNING, or a copy as is."""

    key: ClassVar[str] = "export"
    adapter: Source = option(
        positional=True, metavar="DIR", help="adapter folder written by `dppa-peft prune` (or a Hub id)"
    )
    out: str = option(positional=True, metavar="OUT", help="output folder (written atomically)")
    export_format: str = option(SUPERTUNING, choices=EXPORT_FORMATS, flag="--format", help="output format")
    base: Source | None = option(
        None, help="supertuning: the adapter's base model, folder or Hub id (default: the base recorded in the adapter)"
    )
    overwrite: bool = option(False, help="replace OUT if it exists")

    def validate(self) -> None:
        self._set(
            adapter=Source.of(self.adapter), out=str(self.out), base=None if self.base is None else Source.of(self.base)
        )
        if not self.out.strip():
            _fail("export.out: pass an output folder")


DEFAULT_CACHE = Path(os.environ.get("DPPA_PEFT_CACHE", Path.home() / ".cache" / "dppa-peft"))


@dataclass(frozen=True, kw_only=True)
class DemoSpec(RunOptions):
    """The offline demo: a tiny model zoo pruned and merged with every method, evaluated, reported (``device`` and
    ``dtype``: where and in what dtype every model after the zoo build runs: amplification, learned merges, lm-eval;
    the cached zoo itself is trained on the CPU)."""

    key: ClassVar[str] = "demo"
    out: str = option("demo_output", help="output folder")
    cache_dir: str = option(
        str(DEFAULT_CACHE / "zoo"),
        metavar="DIR",
        help="where the zoo is built and reused ($DPPA_PEFT_CACHE/zoo when that is set)",
    )
    size: str = option("default", choices=DEMO_SIZES, help="zoo size: 'default' (the demo) or 'tiny' (a quick check)")
    seed: int = option(0, help="zoo seed (default 0): same seed, same zoo")
    objective: str = option(
        "tasks",
        choices=OBJECTIVES,
        help=(
            "DPA objective on the dev split: 'tasks' (Domain-Ratio of the dev tasks) or 'kl' (-KL to the dense "
            "fine-tune on dev prompts)"
        ),
    )
    limit: int | None = option(None, help="evaluate only the first N examples of each task")

    def validate(self) -> None:
        _positive(self, "limit")
        self._set(out=str(self.out), cache_dir=str(self.cache_dir))


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


__all__ = [
    "AmplifyParams",
    "AmplifySpec",
    "DTYPES",
    "DemoSpec",
    "Domain",
    "EvalOptions",
    "EvalSpec",
    "ExportSpec",
    "InspectSpec",
    "LearnParams",
    "MergeSpec",
    "ObjectiveParams",
    "PruneSpec",
    "PushSpec",
    "RunOptions",
    "RunSpec",
    "Source",
    "Spec",
    "SpecError",
    "UserError",
    "convert",
    "method_params",
    "option",
    "torch_dtype",
]
