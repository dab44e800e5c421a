"""Names and location of the synthetic lm-eval tasks (``eval_tasks/synthetic`` in the repository).

Each synthetic task has two lm-eval variants: ``demo_<task>`` scores the test split (reported) and
``demo_<task>_dev`` the dev split (tuning). Groups: ``demo_<domain>`` and ``demo_<domain>_dev``.
"""

from __future__ import annotations

from ..eval_tasks import TASKS_DIR
from .domains import DOMAINS, SPLITS

SYNTHETIC_TASKS_DIR = TASKS_DIR / "synthetic"
EVAL_SPLITS = ("dev", "test")


def _suffix(split: str) -> str:
    if split not in EVAL_SPLITS:
        raise ValueError(f"lm-eval variants exist for {EVAL_SPLITS}, not {split!r} (splits: {SPLITS})")
    return "" if split == "test" else "_dev"


def task_name(task: str, split: str = "test") -> str:
    """The lm-eval task scoring ``task`` (e.g. ``"math_add"``) on ``split``: ``demo_math_add[_dev]``."""
    return f"demo_{task}{_suffix(split)}"


def group_name(domain: str, split: str = "test") -> str:
    """The lm-eval group of one domain's two tasks on ``split``: ``demo_math[_dev]``."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {tuple(DOMAINS)}")
    return f"demo_{domain}{_suffix(split)}"


def domain_task_names(split: str = "test") -> dict[str, tuple[str, ...]]:
    """Domain -> its lm-eval task names on ``split``."""
    return {domain: tuple(task_name(t, split) for t in tasks) for domain, tasks in DOMAINS.items()}
