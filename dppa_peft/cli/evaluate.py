"""``dppa-peft eval``: evaluate dense fine-tunes and their pruned/merged adapters; write the paper-style report."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..evaluation.options import EvalOptions
from ..evaluation.report import write_report
from ..evaluation.runner import DomainSpec, MergeSpec, evaluate_all
from .common import add_dataclass_options, given_options

_ACCEPTED: dict[str, list[str]] = {}


def _pairs(values: list[str] | None, flag: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"{flag} expects NAME=VALUE, got {value!r}")
        pairs.append((name, rest))
    return pairs


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate fine-tunes and their adapters with lm-eval; write Task-/Domain-Ratio tables and plots",
        description="Evaluate the base, each domain's dense fine-tune, and pruned (--adapter) or merged (--merge) "
                    "variants on lm-eval tasks, then write report.md, report.json and PNG plots with the paper's "
                    "Task-Ratio (score / dense score) and Domain-Ratio (geometric mean over the domain's tasks).",
    )
    parser.add_argument("--base", required=True, help="base model: local folder or Hub id")
    parser.add_argument("--domain", action="append", required=True, metavar="NAME=FINETUNED",
                        help="a domain and its dense fine-tune (folder or Hub id); repeat per domain")
    parser.add_argument("--tasks", action="append", required=True, metavar="NAME=TASK[,TASK]",
                        help="the lm-eval tasks or groups of a domain: the package's (paper_*, demo_*), lm-eval's "
                             "built-in ones (e.g. hellaswag) or --include-path ones; repeat per domain")
    parser.add_argument("--adapter", action="append", metavar="NAME=ADAPTER",
                        help="a pruned adapter of domain NAME (its method and rate come from its config); repeatable")
    parser.add_argument("--merge", action="append", metavar="NAME=ADAPTER[,NAME=ADAPTER...]",
                        help="adapters merged into one model (W_B + sum of deltas); repeatable")
    parser.add_argument("--merge-mode", default="sum", help="combine mode of every --merge (default: sum)")
    parser.add_argument("--include-path", action="append", default=[],
                        help="extra folder of lm-eval task YAMLs (the package's eval_tasks/ are always included)")
    parser.add_argument("--out", required=True, help="report folder (replaced atomically)")
    group = parser.add_argument_group("lm-eval (device, dtype, batch size, few-shot, stderr, backend)")
    _ACCEPTED.update(add_dataclass_options(group, {"eval": EvalOptions}))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from transformers.utils import logging as transformers_logging

    from ..evaluation.backends import require_vllm
    from ..evaluation.tasks import resolve_tasks

    options = EvalOptions(**given_options(args, _ACCEPTED, "eval", "eval"))
    tasks = {name: tuple(t for t in value.split(",") if t) for name, value in _pairs(args.tasks, "--tasks")}
    domains = [DomainSpec(name, ft, tasks.get(name, ())) for name, ft in _pairs(args.domain, "--domain")]
    missing = [d.name for d in domains if not d.tasks]
    if missing:
        raise ValueError(f"no --tasks for domain(s) {missing}; pass --tasks NAME=TASK[,TASK]")
    known = {d.name for d in domains}
    prunes = _pairs(args.adapter, "--adapter")
    merges = [MergeSpec(dict(_pairs(value.split(","), "--merge")), mode=args.merge_mode) for value in args.merge or []]
    unknown = sorted(({n for n, _ in prunes} | {n for m in merges for n in m.adapters}) - known)
    if unknown:
        raise ValueError(f"adapters name unknown domain(s) {unknown}; declare them with --domain NAME=FINETUNED")
    if options.backend == "vllm":
        require_vllm()
    manager = resolve_tasks([t for d in domains for t in d.tasks], extra_paths=args.include_path)
    transformers_logging.disable_progress_bar()  # one load per variant: lm-eval's bars show the progress
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix=".dppa-merged-", dir=out.parent) as scratch:
        work_dir = out.parent / f"{out.name}-merged" if options.keep_merged else Path(scratch)
        evaluator = options.evaluator(args.base, manager, work_dir=work_dir)
        results = evaluate_all(args.base, domains, evaluator, prunes=prunes, merges=merges)
    written = write_report(results, out)
    kept = f"; merged models kept in {work_dir}" if options.keep_merged else ""
    print(f"wrote {written}/report.md, report.json and plots ({len(results.variants)} variants){kept}")
