"""``dppa-peft run RECIPE``: the steps of a YAML recipe (prune several fine-tunes of one base, then merge them)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="run a YAML recipe: prune several fine-tunes of one base, then merge them",
        description="A recipe names a base, fine-tunes by domain, the pruning method/rate/parameters and an optional "
        "merge (see recipes/). Adapters are written to <output_dir>/<domain>, the merged model to "
        "<output_dir>/merged; relative output_dir is resolved next to the recipe file. Steps whose "
        "output is complete are skipped on a rerun.",
    )
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--overwrite", action="store_true", help="redo every step and replace existing outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..recipe import Recipe, run_recipe

    recipe = Recipe.load(args.recipe)
    for line in run_recipe(recipe, overwrite=args.overwrite, command=args.command_line):
        print(line)
