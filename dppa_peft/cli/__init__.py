"""``dppa-peft``: a thin command line over the Python API. One module per subcommand.

Options are generated from the specs and checked before any work. torch is deferred while the options are parsed
(``--help`` answers without loading it); each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from .._lazy import defer

SUBCOMMANDS = ("demo", "prune", "amplify", "merge", "inspect", "evaluate", "push", "export", "run")


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module

    parser = argparse.ArgumentParser(
        prog="dppa-peft",
        description="Turn fine-tuned LLMs into sparse delta adapters (DP/DPA pruning and baselines), load and merge "
                    "them with PEFT, and evaluate them with lm-eval. Hub ids work wherever a path does; the Hub token "
                    "comes from HF_TOKEN or `hf auth login` and is never printed.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        import_module(f".{name}", __name__).add_parser(sub)
    return parser


def _is_user_error(err: BaseException) -> bool:
    """Errors reported as ``error: ...`` with exit status 2 (a Hub push error only if the Hub code was loaded)."""
    hub_errors = sys.modules.get("dppa_peft.hub_errors")
    kinds: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)
    return isinstance(err, kinds + ((hub_errors.PushError,) if hub_errors else ()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    defer("torch")
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["dppa-peft", *argv])  # provenance for adapter configs and model cards
    try:
        args.func(args)
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"dppa-peft {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
