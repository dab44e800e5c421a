"""The base of every operation's spec: a typed, frozen dataclass whose fields carry their CLI metadata.

Each operation keeps its spec beside its code (``prune/spec.py``, ``amplify/spec.py``, ``merge/spec.py``, ...). A spec
is the single place where the operation's options, their defaults, their allowed values and their validation live:

- the Python API takes them (``prune(PruneSpec(...))``; the keyword forms ``prune(base, finetuned, out, rate=0.8)``
  build the same spec with the spec's ``build``);
- the CLI generates its options from their fields (``cli/common.py``: help, choices, group from field metadata);
- recipes are lists of them (:meth:`Spec.from_dict` rejects unknown keys and wrong types, naming the key's path).

A spec validates itself when built (``__post_init__``), before any file is read, so a typo fails at once. Spec
modules import no torch, transformers or peft at import time: choices that come from a registry (pruning methods,
merge modes) are looked up when asked for, and the registries' modules import torch only when a tensor is touched.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .choices import DTYPES
from .errors import UserError

MISSING = dataclasses.MISSING


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


def group_option(group: str) -> Callable[..., Any]:
    """:func:`option` with ``group`` set, for a spec class whose fields share one option group."""
    return functools.partial(option, group=group)


def choices_of(f: dataclasses.Field) -> list[Any] | None:
    """The allowed values of a field (resolving registry lookups), or None when any value goes."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


class SpecError(UserError):
    """A spec was built with a bad value; the message names the field (its path) and the allowed values."""


def fail(message: str) -> typing.NoReturn:
    raise SpecError(message)


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
                    fail(f"{self.key}.{f.name}: {item!r} is not one of {allowed}")
        self.validate()

    def validate(self) -> None:
        """Cross-field checks of this spec (override; raise with ``fail``)."""

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
        fail(f"{path}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if hint is Source and isinstance(value, (str, Path)):
            return Source(ref=str(value))
        return _convert_dataclass(value, hint, path, extra or {})
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            fail(f"{path}: expected a list ({_type_name(hint)}), got {type(value).__name__} {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis] or [Any]
        items = [convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            fail(f"{path}: expected a mapping ({_type_name(hint)}), got {type(value).__name__} {value!r}")
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
    fail(f"{path}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _convert_dataclass(value: Any, cls: type, path: str, extra: Mapping[str, Any]) -> Any:
    if not isinstance(value, Mapping):
        fail(
            f"{path}: expected a mapping with keys {[f.name for f in dataclasses.fields(cls)]}, got "
            f"{type(value).__name__} {value!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    fixed = [k for k in value if k in extra]
    if fixed:
        fail(f"{path}.{fixed[0]}: set by the recipe, not here")
    unknown = [k for k in value if k not in fields]
    if unknown:
        fail(f"{path}.{unknown[0]}: unknown key; the keys of {path} are {sorted(fields)}")
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
        fail(f"{path}: missing key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        message = str(err)
        fail(message if message.startswith(path) else f"{path}: {message}")


@dataclass(frozen=True, kw_only=True)
class Source(Spec):
    """A model or adapter to read: a local folder or a Hub id, and for a Hub id its revision."""

    key: ClassVar[str] = "source"
    ref: str = option(help="local folder or Hub id")
    revision: str | None = option(None, help="Hub revision (branch, tag or commit sha)")

    def validate(self) -> None:
        if not str(self.ref).strip():
            fail("a model or adapter reference must not be empty; pass a folder or a Hub id")
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


def positive(spec: Spec, *names: str, minimum: float = 1) -> None:
    for name in names:
        value = getattr(spec, name)
        if value is not None and value < minimum:
            fail(f"{spec.key}.{name} must be >= {minimum}, got {value}")


def changed(spec: Spec) -> list[str]:
    """The fields of ``spec`` that differ from their defaults."""
    default = type(spec)()
    return [f.name for f in dataclasses.fields(spec) if getattr(spec, f.name) != getattr(default, f.name)]


def entry_params(
    get: Callable[[str], Any], kind: str, name: str, word: str, params: Mapping[str, Any], path: str
) -> Any:
    """The ``Params`` dataclass of registry entry ``get(name)`` (a ``kind``: method, merge mode) built from
    ``params``; an unknown name, an unknown ``word`` (parameter, option) or a bad value is an error."""
    try:
        cls = get(name).Params
    except ValueError as err:
        fail(str(err))
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        fail(f"{path}.{unknown[0]}: {kind} {name!r} has no {word} {unknown[0]!r}; its {word}s are {known or 'none'}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        fail(f"{path}: {err}")


@dataclass(frozen=True, kw_only=True)
class RunOptions(Spec):
    """Where the work runs (shared by every operation that loads a model)."""

    device: str = option("cpu", group="device", help="device the models run on: cpu, cuda, cuda:1 or auto")
    dtype: str = option(
        "auto", choices=DTYPES, group="device", help=("dtype models are loaded in ('auto': the checkpoint's)")
    )
