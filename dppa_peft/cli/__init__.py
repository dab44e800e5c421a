"""``dppa-peft``: a thin command line over the Python API. One module per subcommand."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..hub_errors import PushError
from . import amplify, demo, evaluate, export, inspect, merge, prune, push, run

SUBCOMMANDS = [demo, prune, amplify, merge, inspect, evaluate, push, export, run]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dppa-peft",
        description="Turn fine-tuned LLMs into sparse delta adapters (DP/DPA pruning and baselines), load and merge "
                    "them with PEFT, and evaluate them with lm-eval. Hub ids work wherever a path does; the Hub token "
                    "comes from HF_TOKEN or `hf auth login` and is never printed.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["dppa-peft", *argv])  # provenance for adapter configs and model cards
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, PushError) as err:
        print(f"dppa-peft {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
