"""``dppa-peft push``: publish an adapter folder on the Hub as one commit (optionally as a stock-PEFT export)."""

from __future__ import annotations

import argparse

from ..choices import EXPORT_FORMATS


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "push",
        help="publish an adapter on the Hugging Face Hub (one commit: adapter files and model card)",
        description="Create the repo if needed (and the branch named by --revision), then upload adapter_config.json, "
        "adapter_model.safetensors and a model card in ONE commit. The token comes from HF_TOKEN or "
        "`hf auth login` (never printed); the endpoint from HF_ENDPOINT. If the connection breaks, "
        "nothing is half-published and re-running the same command is safe.",
    )
    parser.add_argument("adapter", metavar="DIR", help="adapter folder written by `dppa-peft prune` (or a Hub id)")
    parser.add_argument("repo_id", metavar="REPO_ID", help="target Hub repo, e.g. 'user/llama2-math-dp90'")
    parser.add_argument(
        "--private",
        action="store_true",
        help="create the repo private (refused if the repo already exists and is public)",
    )
    parser.add_argument(
        "--revision", default=None, help="branch to commit to (created from main if new; default: main)"
    )
    parser.add_argument("--commit-message", default=None, help="commit message (default: names the method and rate)")
    parser.add_argument(
        "--create-pr", action="store_true", help="open a pull request against --revision instead of committing to it"
    )
    parser.add_argument(
        "--export-format",
        default="sparse-delta",
        choices=EXPORT_FORMATS,
        help="'sparse-delta' (default: this package's compact format; loading needs `import "
        "dppa_peft`) or 'supertuning' (PEFT's built-in sparse tuner: loads with stock PEFT and "
        "transformers, larger; needs the base checkpoint)",
    )
    parser.add_argument(
        "--base",
        default=None,
        help="with --export-format supertuning: the adapter's base model, folder or Hub id (default: "
        "the base recorded in the adapter)",
    )
    parser.add_argument("--base-revision", default=None, help="Hub revision of --base")
    parser.add_argument(
        "--base-model-id",
        default=None,
        metavar="HUB_ID",
        help="the Hub id of the base when the adapter was pruned from a local copy (checked against "
        "the Hub by sampled weights when the local base is still there): the pushed config and "
        "card name the base by it, so Hub users can load the adapter",
    )
    parser.add_argument(
        "--eval-results",
        default=None,
        metavar="JSON",
        help="lm-eval results JSON (as written by dppa-lm-eval --output_path) to put in the card's model-index",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..format.io import SparseDeltaAdapter
    from ..publish.card import load_eval_results

    if args.base_revision and not args.base:
        raise ValueError("--base-revision needs --base")
    if args.base and args.export_format != "supertuning":
        raise ValueError("--base only applies to --export-format supertuning")
    eval_results = load_eval_results(args.eval_results) if args.eval_results else None
    adapter = SparseDeltaAdapter.from_pretrained(args.adapter)
    info = adapter.push_to_hub(
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        export_format=args.export_format,
        base=args.base,
        base_revision=args.base_revision,
        eval_results=eval_results,
        base_model_id=args.base_model_id,
    )
    print(
        f"pushed {adapter.ref} to {args.repo_id}@{args.revision or 'main'} as {args.export_format}: commit {info.oid}"
    )
    print(info.pr_url or info.commit_url)
