"""Command lines for the tests: ``dppa-peft prune ...`` argv lists built from keywords, and running them in-process."""

from __future__ import annotations

import os

from dppa_peft.cli import main


def flags(**options: object) -> list[str]:
    """``--name value`` per keyword (``name_x`` -> ``--name-x``); a list repeats the flag per item, True gives a bare
    flag, None and False nothing."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [word for item in (value if isinstance(value, list) else [value]) for word in (flag, str(item))]
    return argv


def prune_argv(
    base: str | os.PathLike, finetuned: str | os.PathLike, out: str | os.PathLike, *extra: object, **options: object
) -> list[str]:
    """``prune --base BASE --finetuned FT --out OUT`` plus ``--method magnitude`` (fast; ``method=`` picks another,
    ``method=None`` leaves it out), the keyword ``options`` (see :func:`flags`) and ``extra`` words as they are."""
    options = {"method": "magnitude", **options}
    argv = ["prune", "--base", str(base), "--finetuned", str(finetuned), "--out", str(out)]
    return argv + flags(**options) + [str(e) for e in extra]


def run_prune(
    base: str | os.PathLike, finetuned: str | os.PathLike, out: str | os.PathLike, *extra: object, **options: object
) -> int:
    """Run :func:`prune_argv` in-process; returns the exit status."""
    return main(prune_argv(base, finetuned, out, *extra, **options))


def run_cli(capsys, *argv: object) -> tuple[int, str]:
    """Run ``dppa-peft argv`` in-process; returns (exit status, stderr)."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def prune_cli(
    capsys, base: str | os.PathLike, finetuned: str | os.PathLike, out: str | os.PathLike, *extra: object
) -> tuple[int, str]:
    """:func:`prune_argv` run in-process; returns (exit status, stderr)."""
    return run_cli(capsys, *prune_argv(base, finetuned, out, *extra))
