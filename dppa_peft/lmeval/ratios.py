"""The DPPA paper's metrics (arXiv 2403.02799, eq. 7-8).

Task-Ratio_j = R(M_pruned, T_j) / R(M_dense, T_j); Domain-Ratio = the geometric mean (n-th root of the product)
of a domain's Task-Ratios. Both are fractions (1.0 = as good as the dense fine-tune); the paper prints them in %.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def _check_score(value: float, what: str) -> None:
    """Reject NaN, infinite and negative scores, naming ``what``."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}; check the evaluation run")


def task_ratio(pruned_score: float, dense_score: float) -> float:
    """Eq. 7: the pruned (or merged) model's score on a task divided by the dense fine-tune's score."""
    _check_score(pruned_score, "pruned score")
    _check_score(dense_score, "dense score")
    if dense_score == 0:
        raise ValueError(
            "dense score is 0, so the Task-Ratio is undefined; the dense fine-tune scored nothing on this task "
            "(check its evaluation, or leave the task out of the domain)"
        )
    return pruned_score / dense_score


def domain_ratio(task_ratios: Iterable[float]) -> float:
    """Eq. 8: the geometric mean of a domain's Task-Ratios (0 if any ratio is 0)."""
    ratios = list(task_ratios)
    if not ratios:
        raise ValueError("domain_ratio needs at least one Task-Ratio; the domain has no scored tasks")
    for ratio in ratios:
        _check_score(ratio, "Task-Ratio")
    return math.prod(ratios) ** (1.0 / len(ratios))


def format_percent(ratio: float, digits: int = 2) -> str:
    """A ratio as a percentage with ``digits`` decimals, without the sign: 0.8685 -> ``"86.85"``."""
    if not math.isfinite(ratio):
        raise ValueError(f"cannot format {ratio!r} as a percentage")
    return f"{ratio * 100:.{digits}f}"
