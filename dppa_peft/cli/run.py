"""``dppa-peft run RECIPE``: prune every fine-tune of a YAML recipe and merge them."""

from __future__ import annotations

import argparse

from ..recipe import Recipe, run_recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run", help="run a YAML recipe: prune several fine-tunes of one base, then merge them",
        description="A recipe names a base, fine-tunes by domain, the pruning method/rate/parameters and an optional "
                    "merge (see recipes/). Adapters are written to <output_dir>/<domain>, the merged model to "
                    "<output_dir>/merged; relative output_dir is resolved next to the recipe file.",
    )
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    recipe = Recipe.load(args.recipe)
    summaries = run_recipe(recipe, overwrite=args.overwrite, command=args.command_line)
    for domain, summary in summaries.items():
        print(f"{domain}: {summary.line()}")
    if recipe.merge_mode is not None:
        print(f"merged ({recipe.merge_mode}) -> {recipe.output_dir / 'merged'}")
