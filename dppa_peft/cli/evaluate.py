"""``dppa-peft eval``: evaluate dense fine-tunes and their pruned/merged adapters; write the paper-style report."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.spec import Source
from ..evaluation.spec import Domain, EvalSpec
from .common import add_spec_command, pairs


def add_parser(sub: argparse._SubParsersAction) -> None:
    options = add_spec_command(
        sub,
        "eval",
        EvalSpec,
        run=run,
        extra=_structured,
        help="evaluate fine-tunes and their adapters with lm-eval; write Task-/Domain-Ratio tables and plots",
        description="Evaluate the base, each domain's dense fine-tune, and pruned (--adapter) or merged (--merge) "
        "variants on lm-eval tasks, then write report.md, report.json and PNG plots with the paper's "
        "Task-Ratio (score / dense score) and Domain-Ratio (geometric mean over the domain's tasks).",
    )
    group = options.groups["required"]
    group.add_argument(
        "--domain",
        action="append",
        required=True,
        metavar="NAME=FINETUNED",
        help="a domain and its dense fine-tune (folder or Hub id); repeat per domain",
    )
    group.add_argument(
        "--tasks",
        action="append",
        required=True,
        metavar="NAME=TASK[,TASK]",
        help="the lm-eval tasks or groups of a domain: the package's (paper_*, demo_*), lm-eval's "
        "built-in ones (e.g. hellaswag) or --include-path ones; repeat per domain",
    )
    variants = options.parser.add_argument_group("variants")
    variants.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=ADAPTER",
        help="a pruned adapter of domain NAME (its method and rate come from its config); repeatable",
    )
    variants.add_argument(
        "--merge",
        action="append",
        metavar="NAME=ADAPTER[,NAME=ADAPTER...]",
        help="adapters merged into one model (W_B + sum of deltas); repeatable",
    )
    options.groups[""].add_argument(
        "--include-path",
        action="append",
        default=[],
        help="extra folder of lm-eval task YAMLs (the package's tasks are always included)",
    )


def _structured(args: argparse.Namespace) -> dict[str, Any]:
    """The domains, adapters and merges from their NAME=VALUE options."""
    tasks = {name: tuple(t for t in value.split(",") if t) for name, value in pairs(args.tasks, "--tasks")}
    domains = [
        Domain(name=name, finetuned=Source(ref=ft), tasks=tasks.get(name, ()))
        for name, ft in pairs(args.domain, "--domain")
    ]
    merges = [dict(pairs(value.split(","), "--merge")) for value in args.merge or []]
    return {
        "domains": domains,
        "adapters": pairs(args.adapter, "--adapter"),
        "merges": merges,
        "include_path": list(args.include_path),
    }


def run(spec: EvalSpec, args: argparse.Namespace) -> None:
    from ..evaluation.api import evaluate

    results, out, kept = evaluate(spec)
    note = f"; merged models kept in {kept}" if kept else ""
    print(f"wrote {out}/report.md, report.json and plots ({len(results.variants)} variants){note}")
