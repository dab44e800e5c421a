"""``dppa-peft``: a thin command line over the Python API. One module per subcommand.

Options are generated from the specs and checked before any work. torch is deferred while the options are parsed
(``--help`` answers without loading it); each command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import signal
import sys
import traceback
from collections.abc import Iterator
from importlib import import_module

from ..core.lazy import defer
from ..core.errors import Interrupted, UserError, redact

SUBCOMMANDS = ("demo", "prune", "amplify", "merge", "inspect", "evaluate", "push", "export", "run")  # modules
# Errors that come from the user's input or environment (paths, permissions, disk, network, bad values): printed as
# one "error:" line with exit status 2. OSError covers FileNotFoundError, FileExistsError, PermissionError, ENOSPC.
# A Hub push error too, when the Hub code was loaded (see user_facing_errors).
USER_FACING_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError)
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
EXIT_USER_ERROR = 2
DEBUG_FLAG = "--debug"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dppa-peft",
        description="Turn fine-tuned LLMs into sparse delta adapters (DP/DPA pruning and baselines), load and merge "
        "them with PEFT, and evaluate them with lm-eval. Hub ids work wherever a path does; the Hub token "
        "comes from HF_TOKEN or `hf auth login` and is never printed.",
    )
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help="on an error, print the full Python traceback too (also accepted after the subcommand)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        import_module(f".{name}", __name__).add_parser(sub)
    return parser


def user_facing_errors() -> tuple[type[BaseException], ...]:
    """``USER_FACING_ERRORS`` plus ``PushError`` once the Hub code is loaded (it is not, at parse time)."""
    hub_errors = sys.modules.get("dppa_peft.core.hub_errors")
    return USER_FACING_ERRORS + ((hub_errors.PushError,) if hub_errors is not None else ())


class WarningLines(logging.Handler):
    """The package's log warnings (a likely wrong base, a removed stale temp folder) as ``warning: ...`` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(redact(f"warning: {record.getMessage()}"), file=sys.stderr)  # sys.stderr looked up now, not at install


def show_warnings() -> None:
    """Install ``WarningLines`` on the package logger once."""
    logger = logging.getLogger("dppa_peft")
    if not any(isinstance(h, WarningLines) for h in logger.handlers):
        logger.addHandler(WarningLines(logging.WARNING))


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While the block runs, SIGINT/SIGTERM/SIGHUP raise ``Interrupted`` so every ``finally`` and temp-folder
    cleanup runs (the default SIGTERM/SIGHUP action kills the process on the spot and leaves temp folders behind)."""

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signum, signal.Signals(signum).name)

    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
        for name in STOP_SIGNALS:
            if hasattr(signal, name):
                number = getattr(signal, name)
                previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    defer("torch")
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["dppa-peft", *argv])  # provenance for adapter configs and model cards
    show_warnings()
    try:
        with stop_signals_raise():
            args.func(args)
    except KeyboardInterrupt as err:
        status = err.exit_status if isinstance(err, Interrupted) else 128 + signal.SIGINT
        reason = err.name if isinstance(err, Interrupted) else "SIGINT"
        print(f"dppa-peft {args.command}: stopped by {reason}; unfinished outputs were removed", file=sys.stderr)
        if debug:
            print(redact(traceback.format_exc()), file=sys.stderr)
        return status
    except Exception as err:
        if not isinstance(err, user_facing_errors()):
            raise
        if debug:
            print(redact(traceback.format_exc()), file=sys.stderr)
        print(redact(f"dppa-peft {args.command}: error: {str(err) or type(err).__name__}"), file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
