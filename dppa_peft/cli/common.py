"""Helpers shared by subcommands: option groups generated from parameter dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

BOOL_TYPES = (bool, "bool")


def _scalar_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_dataclass_options(group: argparse._ArgumentGroup, owners: dict[str, type]) -> dict[str, list[str]]:
    """Add one ``--field-name`` option per dataclass field, shared by every owner that has it.

    ``owners`` maps an owner name (e.g. a method) to its parameter dataclass. Defaults are left to the dataclass
    (options default to None and are passed only when given). Returns option dest -> owners that accept it.
    """
    accepted: dict[str, list[str]] = {}
    fields: dict[str, tuple[dataclasses.Field, Any, list[str]]] = {}
    for owner, cls in owners.items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            entry = fields.setdefault(field.name, (field, hints[field.name], []))
            entry[2].append(f"{owner} (default {field.default!r})")
            accepted.setdefault(field.name, []).append(owner)
    for name, (field, hint, defaults) in sorted(fields.items()):
        kind = _scalar_type(hint)
        help_text = f"{field.metadata.get('help', '')} [{'; '.join(defaults)}]"
        flag = "--" + name.replace("_", "-")
        if kind in BOOL_TYPES:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is list:
            group.add_argument(flag, dest=name, type=typing.get_args(kind)[0], nargs="+", default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=name, type=kind, default=None, choices=field.metadata.get("choices"),
                               help=help_text)
    return accepted


def given_options(args: argparse.Namespace, accepted: dict[str, list[str]], owner: str, what: str) -> dict[str, Any]:
    """The generated options the user set; an option that ``owner`` does not take is an error."""
    chosen = {}
    for name, owners in accepted.items():
        value = getattr(args, name)
        if value is None:
            continue
        if owner not in owners:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} does not apply to {what} {owner!r} (it is for {', '.join(owners)})")
        chosen[name] = value
    return chosen
