"""Data and scoring for the synthetic demo tasks; lm-eval loads this file next to the YAMLs.

The data comes from the deterministic generator in ``dppa_peft.demo.domains``, so the tasks work from any
current directory and need no files (the zoo need not be built).
"""

from __future__ import annotations

import sys
from pathlib import Path

import datasets

try:
    import dppa_peft  # noqa: F401  (installed, or on sys.path)
except ImportError:  # running from a source checkout that is not installed: use the checkout's package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dppa_peft.demo.domains import task_split  # noqa: E402
from dppa_peft.demo.scoring import choice_correct, numeric_correct  # noqa: E402
from dppa_peft.demo.tasks import EVAL_SPLITS  # noqa: E402


def load(demo_task: str, **_metadata: object) -> datasets.DatasetDict:
    """The dev and test splits of one synthetic task (lm-eval passes task metadata as extra keywords)."""
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list([example.as_record() for example in task_split(demo_task, split)])
            for split in EVAL_SPLITS
        }
    )


def process_numeric(doc: dict, results: list[str]) -> dict[str, int]:
    """Math: the first number in the generation must equal the answer."""
    return {"acc": int(numeric_correct(results[0], doc["answer"]))}


def process_choice(doc: dict, results: list[str]) -> dict[str, int]:
    """Classification: the generation must name the correct choice and no other one."""
    return {"acc": int(choice_correct(results[0], doc["answer"], doc["choices"]))}
