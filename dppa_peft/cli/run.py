"""``dppa-peft run RECIPE``: the steps of a YAML recipe (prune several fine-tunes of one base, then merge them)."""

from __future__ import annotations

import argparse

from ..recipe.spec import RunSpec
from .common import add_spec_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_spec_command(
        sub,
        "run",
        RunSpec,
        run=run,
        help="run a YAML recipe: prune several fine-tunes of one base, then merge them",
        description="A recipe names a base, fine-tunes by domain, the pruning method/rate/parameters and an optional "
        "merge (see recipes/). Adapters are written to <output_dir>/<domain>, the merged model to "
        "<output_dir>/merged; relative output_dir is resolved next to the recipe file. Every step is "
        "validated before the first one runs; steps whose output is complete are skipped on a rerun.",
    )


def run(spec: RunSpec, args: argparse.Namespace) -> None:
    from ..recipe.runner import run as run_recipe

    for line in run_recipe(spec, command=args.command_line):
        print(line)
