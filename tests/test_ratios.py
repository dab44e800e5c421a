"""Task-Ratio and Domain-Ratio (DPPA eq. 7-8)."""

from __future__ import annotations

import math

import pytest

from dppa_peft.lmeval.ratios import domain_ratio, format_percent, task_ratio


def test_task_ratio_is_pruned_over_dense() -> None:
    assert task_ratio(0.3, 0.6) == 0.5
    assert task_ratio(0.0, 0.6) == 0.0
    assert task_ratio(0.9, 0.6) == pytest.approx(1.5)


def test_domain_ratio_is_the_geometric_mean() -> None:
    assert domain_ratio([0.5, 2.0]) == 1.0
    assert domain_ratio([0.81]) == 0.81
    assert domain_ratio([2.0, 4.0, 8.0]) == pytest.approx(4.0, rel=1e-12)  # cube root of 64
    assert domain_ratio([0.9, 0.8, 0.5]) == pytest.approx(0.36 ** (1 / 3), rel=1e-12)
    assert domain_ratio(iter([0.25, 1.0])) == 0.5
    assert domain_ratio([0.0, 0.9]) == 0.0


def test_domain_ratio_from_scores() -> None:
    """GSM8K 0.45 vs dense 0.60 (0.75) and MATH 0.12 vs dense 0.10 (1.2): sqrt(0.9)."""
    ratios = [task_ratio(0.45, 0.60), task_ratio(0.12, 0.10)]
    assert ratios == [pytest.approx(0.75), pytest.approx(1.2)]
    assert domain_ratio(ratios) == pytest.approx(math.sqrt(0.9), rel=1e-12)
    assert format_percent(domain_ratio(ratios)) == "94.87"


@pytest.mark.parametrize(
    ("pruned", "dense", "message"),
    [
        (0.5, 0.0, "dense score is 0"),
        (-0.1, 0.5, "pruned score must be a finite number >= 0"),
        (0.5, -1.0, "dense score must be a finite number >= 0"),
        (math.nan, 0.5, "pruned score"),
        (0.5, math.inf, "dense score"),
    ],
)
def test_task_ratio_errors(pruned: float, dense: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        task_ratio(pruned, dense)


def test_domain_ratio_errors() -> None:
    with pytest.raises(ValueError, match="at least one Task-Ratio"):
        domain_ratio([])
    with pytest.raises(ValueError, match="Task-Ratio must be a finite number >= 0"):
        domain_ratio([1.0, -0.5])


def test_format_percent() -> None:
    assert format_percent(0.8685) == "86.85"
    assert format_percent(1.1055) == "110.55"
    assert format_percent(0.5, digits=0) == "50"
    assert format_percent(0.0) == "0.00"
    with pytest.raises(ValueError, match="percentage"):
        format_percent(math.nan)
