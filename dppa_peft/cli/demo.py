"""``dppa-peft demo``: the offline demo (the README's main job)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("DPPA_PEFT_CACHE", Path.home() / ".cache" / "dppa-peft"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="offline demo: build a tiny model zoo, prune/merge it with every method, evaluate, report",
        description="Builds (once; cached) a small Llama base pretrained on synthetic text and three domain "
        "fine-tunes (math: heavily fine-tuned, finance, law; two tasks each), prunes each at 50%, 80%, "
        "90%, 95% and 99% with magnitude, OWL, DARE, DELLA, DP, DPPA (DPA factors tuned on the dev "
        "split; not at 50%) and learned amplification on magnitude and DP masks (per-row factors "
        "learned by KL to the dense fine-tune on the dev prompts; DP masks at 90% and above), merges "
        "the three domains at 90% (sum, TIES, DARE-TIES, DELLA, learned, AdaMerging task/layer; the "
        "learned ones on the dev prompts), evaluates everything with lm-eval on the test split and "
        "writes Task-/Domain-Ratio tables and plots. No network access.",
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE / "zoo"),
        help="where the zoo is built and reused (default ~/.cache/dppa-peft/zoo or $DPPA_PEFT_CACHE)",
    )
    parser.add_argument(
        "--size",
        default="default",
        choices=["default", "tiny"],
        help="zoo size: 'default' (the demo) or 'tiny' (a quick check, as in CI)",
    )
    parser.add_argument("--seed", type=int, default=0, help="zoo seed (default 0): same seed, same zoo")
    parser.add_argument(
        "--objective",
        default="tasks",
        choices=["tasks", "kl"],
        help="DPA objective on the dev split: 'tasks' (Domain-Ratio of the dev tasks, default) or "
        "'kl' (-KL to the dense fine-tune on dev prompts)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each task")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from transformers.utils import logging as transformers_logging

    from ..demo.runner import DemoSettings, run_demo, summary

    transformers_logging.disable_progress_bar()  # dozens of tiny model loads: our own bars show the progress
    settings = DemoSettings(size=args.size, seed=args.seed, objective=args.objective, limit=args.limit)
    print(summary(run_demo(args.out, args.cache_dir, settings)))
