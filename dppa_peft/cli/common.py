"""Command-line options generated from the specs (each operation's ``spec.py``, on ``core.spec``), and the spec
built back from them.

One option per spec field: its help, choices and group come from the field's metadata, its type from the type hint.
A ``Source`` field ``x`` gives ``--x`` and ``--x-revision``; a nested spec (DPA search, objective) adds its fields;
the ``params`` of a prune are every registered method's parameters, listed under their method. Options default to
None, so the spec's own defaults apply (and are shown in the help) and only the options the user gave are passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UserError
from ..core.spec import Source, Spec, choices_of


def _strip_optional(hint: Any) -> Any:
    """``X`` for ``X | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(f: dataclasses.Field, owners: str = "") -> str:
    text = f.metadata.get("help", "")
    default = f.default
    if (
        default not in (None, False, dataclasses.MISSING, "")
        and not isinstance(default, (list, dict))
        and "default" not in text
    ):
        text += f" (default: {default})"
    if owners:
        text += f" [{owners}]"
    return text.replace("%", "%%")


@dataclass
class _Entry:
    """How one spec field maps to parsed arguments."""

    path: tuple[str, ...]  # nested spec fields, e.g. ("search", "tol")
    dest: str
    kind: str  # "value", "source", "sources"
    revision_dest: str | None = None
    required: bool = False
    flag: str = ""
    metavar: str = ""  # of a positional argument


@dataclass
class SpecOptions:
    """The options of one spec on a parser; :meth:`build` turns parsed arguments into the spec."""

    spec: type[Spec]
    parser: argparse.ArgumentParser
    entries: list[_Entry] = field(default_factory=list)
    param_owners: dict[str, list[str]] = field(default_factory=dict)  # parameter -> registry entries that take it
    registry_field: dataclasses.Field | None = None
    groups: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.groups["required"] = self.parser.add_argument_group("required")
        self.groups[""] = self.parser.add_argument_group("common options")
        self._add_fields(self.spec, ())
        self.parser.usage = self._usage()

    def _group(self, name: str | None) -> Any:
        key = name or ""
        if key not in self.groups:
            self.groups[key] = self.parser.add_argument_group(key)
        return self.groups[key]

    def _usage(self) -> str:
        positional = [e.metavar for e in self.entries if e.kind in ("positional", "argument")]
        required = [
            f"{e.flag} {e.flag.lstrip('-').upper()}"
            for e in self.entries
            if e.required and e.kind not in ("positional", "argument")
        ]
        return " ".join(["%(prog)s", *positional, *required, "[options]"])

    def _add_fields(self, cls: type, prefix: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init or not f.metadata.get("cli", True):
                continue
            hint = _strip_optional(hints[f.name])
            if f.metadata.get("params_of"):
                self._add_registry_options(f)
            elif isinstance(hint, type) and issubclass(hint, Spec) and hint is not Source:
                self._add_fields(hint, (*prefix, f.name))
            else:
                self._add_field(f, hint, (*prefix, f.name))

    def _add_field(self, f: dataclasses.Field, hint: Any, path: tuple[str, ...]) -> None:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        group = self._group("required" if required else f.metadata.get("group"))
        dest = ".".join(path)
        flag = f.metadata.get("flag") or flag_of(f.name)
        help_text = _help(f)
        origin = typing.get_origin(hint)
        item = (typing.get_args(hint) or (str,))[0] if origin in (list, tuple) else None
        metavar = f.metadata.get("metavar") or f.name.upper()
        if hint is Source or item is Source:
            many = item is Source
            if f.metadata.get("positional"):
                self.parser.add_argument(dest, help=help_text, metavar=metavar, nargs=None if required else "?")
                kind = "positional"
                revision_flag = flag_of(f.name + "_revision")
            else:
                group.add_argument(
                    flag,
                    dest=dest,
                    required=required,
                    help=help_text,
                    action="append" if many else "store",
                    metavar=f.name.upper().rstrip("S"),
                )
                kind = "sources" if many else "source"
                revision_flag = flag + "-revision"
            revision_dest = dest + ".revision"
            self._group(f.metadata.get("group") if not required else None).add_argument(
                revision_flag,
                dest=revision_dest,
                action="append" if many else "store",
                metavar="REV",
                help=f"Hub revision (branch, tag or commit) of {flag if kind != 'positional' else metavar}"
                + (", once per " + flag if many else ""),
            )
            self.entries.append(_Entry(path, dest, kind, revision_dest, required, flag, metavar))
            return
        choices = choices_of(f)
        if f.metadata.get("positional"):  # a plain positional value (a repo id, a file)
            self.parser.add_argument(dest, help=help_text, metavar=metavar, type=hint, choices=choices)
            self.entries.append(_Entry(path, dest, "argument", required=True, metavar=metavar))
            return
        kwargs: dict[str, Any] = {"dest": dest, "help": help_text, "default": None}
        if hint is not bool and not choices:
            kwargs["metavar"] = metavar
        if hint is bool:
            kwargs["action"] = "store_true" if f.default is False else argparse.BooleanOptionalAction
        elif item is not None:
            kwargs.update(type=item, nargs="+") if f.metadata.get("flag") is None else kwargs.update(
                type=item, action="append"
            )
        else:
            kwargs.update(type=hint, choices=choices, required=required)
        if hint is bool or kwargs.get("action") == "append":
            kwargs.pop("choices", None)
        group.add_argument(flag, **kwargs)
        self.entries.append(_Entry(path, dest, "value", required=required, flag=flag))

    def _add_registry_options(self, f: dataclasses.Field) -> None:
        """The parameters of every registry entry (method, merge mode): a group per entry, shared ones together."""
        self.registry_field = f
        entries = f.metadata["params_of"]()
        owners: dict[str, list[str]] = {}
        fields: dict[str, tuple[dataclasses.Field, Any]] = {}
        for name, cls in entries.items():
            hints = typing.get_type_hints(cls.Params)
            for param in dataclasses.fields(cls.Params):
                owners.setdefault(param.name, []).append(name)
                fields.setdefault(param.name, (param, _strip_optional(hints[param.name])))
        kind = f.metadata["selector"]
        for name, cls in entries.items():
            own = [n for n in owners if owners[n] == [name]]
            if own:
                group = self._group(f"{kind} {name}: {cls.summary}")
                for option in own:
                    self._add_param_option(group, option, *fields[option], [])
        shared = [n for n in owners if len(owners[n]) > 1]
        if shared:
            group = self._group(f"options of several {kind}s")
            for option in shared:
                self._add_param_option(group, option, *fields[option], owners[option])
        self.param_owners = owners

    def _add_param_option(self, group: Any, name: str, f: dataclasses.Field, hint: Any, owners: list[str]) -> None:
        kwargs: dict[str, Any] = {
            "dest": f"params.{name}",
            "default": None,
            "metavar": name.upper(),
            "help": _help(f, ", ".join(owners)) if owners else _help(f),
        }
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is list:
            kwargs.update(type=typing.get_args(hint)[0], nargs="+")
        else:
            kwargs["type"] = hint
            choices = choices_of(f)
            if choices:
                kwargs.update(choices=choices, metavar=None)
        group.add_argument(flag_of(name), **kwargs)

    def build(self, args: argparse.Namespace, **fixed: Any) -> Any:
        """The spec from parsed arguments (only the options given; the spec's defaults fill the rest)."""
        values: dict[str, Any] = dict(fixed)
        for entry in self.entries:
            value = self._value(args, entry)
            if value is None:
                continue
            target = values
            for key in entry.path[:-1]:
                target = target.setdefault(key, {})
            target[entry.path[-1]] = value
        if self.registry_field is not None:
            selector = self.registry_field.metadata["selector"]
            chosen = values.get(selector, next(f.default for f in dataclasses.fields(self.spec) if f.name == selector))
            values["params"] = self._registry_params(args, self.registry_field.metadata["resolve"](chosen))
        return _instantiate(self.spec, values)

    @staticmethod
    def _value(args: argparse.Namespace, entry: _Entry) -> Any:
        value = getattr(args, entry.dest, None)
        revision = getattr(args, entry.revision_dest, None) if entry.revision_dest else None
        if entry.kind == "sources":
            refs = value or []
            revisions = revision or [None] * len(refs)
            if len(revisions) != len(refs):
                raise UserError(
                    f"got {len(revisions)} {entry.flag}-revision for {len(refs)} {entry.flag}; pass one "
                    f"per {entry.flag} ('main' for the default branch)"
                )
            return [Source(ref=r, revision=v) for r, v in zip(refs, revisions)] if refs else None
        if entry.kind in ("source", "positional"):
            if value is None:
                if revision is not None:
                    raise UserError(f"{entry.flag}-revision needs {entry.flag}")
                return None
            return Source(ref=value, revision=revision)
        return value

    def _registry_params(self, args: argparse.Namespace, chosen: str) -> dict[str, Any]:
        """The given parameter options; one that the chosen method / merge mode does not take is an error."""
        meta = self.registry_field.metadata if self.registry_field else {}
        kind = meta.get("label") or meta.get("selector", "")
        params = {}
        for name, owners in self.param_owners.items():
            value = getattr(args, f"params.{name}", None)
            if value is None:
                continue
            if chosen not in owners:
                raise UserError(f"{flag_of(name)} does not apply to {kind} {chosen!r} (it is for {', '.join(owners)})")
            params[name] = value
        return params


def _instantiate(cls: type, values: dict[str, Any]) -> Any:
    """Build nested specs from the innermost out."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        hint = _strip_optional(hints[key])
        if isinstance(value, dict) and isinstance(hint, type) and issubclass(hint, Spec) and hint is not Source:
            value = _instantiate(hint, value)
        kwargs[key] = value
    return cls(**kwargs)


class CompactHelp(argparse.HelpFormatter):
    """Help at up to 120 columns (not the 80 of a pipe), options and their help on one line where they fit."""

    def __init__(self, prog: str) -> None:
        width = min(120, max(100, shutil.get_terminal_size((120, 24)).columns))
        super().__init__(prog, width=width, max_help_position=34)


def add_spec_command(
    sub: argparse._SubParsersAction,
    name: str,
    spec: type[Spec],
    *,
    help: str,
    description: str,
    run: Callable[[Any, argparse.Namespace], None],
    extra: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> SpecOptions:
    """A subcommand whose options are generated from ``spec``; ``run(spec, args)`` does the work.

    ``extra(args)`` gives the values of fields the command line spells in its own way (e.g. ``NAME=VALUE`` pairs).
    """
    parser = sub.add_parser(name, help=help.replace("%", "%%"), description=description, formatter_class=CompactHelp)
    options = SpecOptions(spec, parser)
    parser.set_defaults(func=lambda args: run(options.build(args, **(extra(args) if extra else {})), args))
    return options


def pairs(values: list[str] | None, flag: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` option values as pairs; anything else is an error naming the option."""
    out = []
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UserError(f"{flag} expects NAME=VALUE, got {value!r}")
        out.append((name, rest))
    return out
