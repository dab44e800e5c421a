"""``dppa-peft demo``: the offline demo, the README's main job (options generated from ``DemoSpec``)."""

from __future__ import annotations

import argparse

from ..demo.spec import DemoSpec
from .common import add_spec_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_spec_command(
        sub,
        "demo",
        DemoSpec,
        run=run,
        help="offline demo: build a tiny model zoo, prune/merge it with every method, evaluate, report",
        description="Builds (once; cached) a small Llama base pretrained on synthetic text and three domain "
        "fine-tunes (math: heavily fine-tuned, finance, law; two tasks each), prunes each at 50%, 80%, "
        "90%, 95% and 99% with magnitude, OWL, DARE, DELLA, DP, DPPA (DPA factors tuned on the dev "
        "split; not at 50%) and learned amplification on magnitude and DP masks (factors per magnitude "
        "partition and output row learned by KL to the dense fine-tune on the dev prompts, 200 steps; DP "
        "masks at 90% and above), merges the three domains at 90% (sum, TIES, DARE-TIES, DELLA, learned, AdaMerging task/layer; the "
        "learned ones on the dev prompts), evaluates everything with lm-eval on the test split and "
        "writes Task-/Domain-Ratio tables and plots. No network access.",
    )


def run(spec: DemoSpec, args: argparse.Namespace) -> None:
    from transformers.utils import logging as transformers_logging

    from ..demo.runner import demo, summary

    transformers_logging.disable_progress_bar()  # dozens of tiny model loads: our own bars show the progress
    print(summary(demo(spec)))
