"""DPA factor search: one factor per partition, found partition by partition (paper §3.3.2; docs/algorithms.md §10.5–§10.7).

DPA methods (which other partitions are present while factor ``r_i`` is searched):

- Method 1 (progressive): earlier partitions at their found factors, later partitions absent (factor 0);
- Method 2: earlier partitions at their found factors, later partitions present at factor 1.

Strategies:

- ``default``: golden-section search of each factor on a bounded interval (``AMPLIFY_BOUNDS`` = [0.5, 3.0], or
  ``REDUCE_BOUNDS`` = [0.0, 1.2] for methods that already rescale, like DARE). It makes exactly
  ``calls_for_tolerance(lo, hi, tol)`` calls per partition (10 on [0.5, 3.0] and 8 on [0, 1.2] at the default
  ``tol`` = 0.05), plus one call for the unamplified baseline (all factors 1). For an objective that is unimodal
  along the searched factor, the result is within ``tol`` of that factor's optimum. The returned factors are the
  best-scoring vector it evaluated (the baseline included), so the search never makes the objective worse.
- ``reference``: the released ``python_contral.py`` loop, replayed with its quirks: steps of +0.1 only (never
  below the start), factors formatted with '%.1f' before each build, ``best`` carried over from one partition to
  the next, the next factor starting at 1.0 (from 0) or at +0.1, a failed factor stepping back by 0.1 only when it
  is above 1 (so ``r_B`` stays at the failed 1.0 when its first trial does not beat the best so far), and the
  final factors taken after the last failure, so they need not be the best evaluated ones. Start: [1.8, 0, …]
  (Method 1) or [1.8, 1, …] (Method 2). Two deliberate differences: ``best`` starts at −inf, not 0, so objectives
  with negative scores (−KL) work (for the paper's positive Domain-Ratio both agree), and a vector that repeats
  after the '%.1f' rounding is scored once (cached). The loop has no bound of its own: after
  ``REFERENCE_MAX_CALLS`` calls (or ``max_calls``) it stops, records that, and returns the best vector evaluated.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.progress import progress_bar

from ..core.choices import DEFAULT_TOL, DPA_METHODS, STRATEGIES

AMPLIFY_BOUNDS = (0.5, 3.0)
REDUCE_BOUNDS = (0.0, 1.2)
REFERENCE_START = 1.8
REFERENCE_STEP = 0.1
REFERENCE_MAX_CALLS = 100
FACTOR_DIGITS = 4  # candidate factors are rounded to this many decimals (what is applied is what is logged)
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

logger = logging.getLogger(__name__)

ScoreFn = Callable[[list[float]], float]


@dataclass
class Evaluation:
    """One objective call: the raw factor vector, its score, and the partition being searched (None: baseline)."""

    factors: list[float]
    score: float
    partition: int | None

    def record(self) -> dict[str, Any]:
        return {"factors": self.factors, "score": self.score, "partition": self.partition}


@dataclass
class SearchResult:
    """The chosen factors and every evaluation that led to them."""

    factors: list[float]
    history: list[Evaluation]
    settings: dict[str, Any]
    seconds: float
    stopped: str | None = None

    @property
    def calls(self) -> int:
        return len(self.history)

    @property
    def best(self) -> Evaluation:
        """The best-scoring evaluation (the earliest among equal scores)."""
        return max(self.history, key=lambda e: e.score)

    @property
    def score(self) -> float | None:
        """The score of the chosen factors, or None when they were never evaluated (reference loop)."""
        return next((e.score for e in self.history if e.factors == self.factors), None)

    def record(self, objective: dict[str, Any]) -> dict[str, Any]:
        """The ``search`` block of the adapter config's ``amplification``."""
        return {
            **self.settings,
            "objective": objective,
            "calls": self.calls,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
            "final_score": self.score,
            "best": self.best.record(),
            "history": [e.record() for e in self.history],
        }


class _BudgetExhausted(Exception):
    """Raised inside a strategy when ``max_calls`` objective calls were made."""


class ScoredCalls:
    """Scores each factor vector once, logs every (factors, score) pair and shows them in a progress bar."""

    def __init__(self, score: ScoreFn, total: int | None, max_calls: int, progress: bool, desc: str) -> None:
        self._score = score
        self.max_calls = max_calls
        self.history: list[Evaluation] = []
        self._cache: dict[tuple[float, ...], float] = {}
        self._bar = progress_bar(total=total, desc=desc, unit="call", disable=not progress)

    def __call__(self, factors: Sequence[float], partition: int | None) -> float:
        key = tuple(round(float(f), FACTOR_DIGITS) for f in factors)
        if key in self._cache:
            return self._cache[key]
        if len(self.history) >= self.max_calls:
            raise _BudgetExhausted
        score = float(self._score(list(key)))
        if not math.isfinite(score):
            raise ValueError(f"the objective returned {score} for factors {list(key)}; it must return a finite score")
        self._cache[key] = score
        self.history.append(Evaluation(list(key), score, partition))
        best = max(e.score for e in self.history)
        logger.info("DPA call %d: factors %s -> score %.6g (best %.6g)", len(self.history), list(key), score, best)
        self._bar.update(1)
        self._bar.set_postfix_str(f"factors={list(key)} score={score:.5g} best={best:.5g}")
        return score

    def close(self) -> None:
        self._bar.close()


def calls_for_tolerance(lo: float, hi: float, tol: float) -> int:
    """Golden-section calls needed to bracket a unimodal optimum on [lo, hi] within ``tol``: the bracket after
    ``m`` calls is ``(hi − lo)·g^(m−1)`` wide, ``g`` = 0.618…"""
    if tol <= 0 or hi <= lo:
        raise ValueError(f"need lo < hi and tol > 0, got bounds [{lo}, {hi}] and tol {tol}")
    return max(2, 1 + math.ceil(math.log(tol / (hi - lo)) / math.log(GOLDEN) - 1e-9))


def golden_section(f: Callable[[float], float], lo: float, hi: float, calls: int) -> None:
    """Maximise ``f`` on [lo, hi] with exactly ``calls`` evaluations (ties keep the lower half)."""
    a, b = lo, hi
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(calls - 2):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)


def _default_search(
    evaluate: ScoredCalls, k: int, dpa_method: int, bounds: tuple[float, float], calls: int
) -> list[float]:
    evaluate([1.0] * k, None)
    later = 0.0 if dpa_method == 1 else 1.0
    found: list[float] = []
    for i in range(k):

        def along(x: float, i: int = i) -> float:
            return evaluate(found + [x] + [later] * (k - i - 1), i)

        golden_section(along, bounds[0], bounds[1], calls)
        phase = [e for e in evaluate.history if e.partition == i]
        found.append(max(phase, key=lambda e: e.score).factors[i])
    return found


def _round1(factors: Sequence[float]) -> list[float]:
    return [float("%.1f" % f) for f in factors]


def _reference_loop(evaluate: ScoredCalls, start: Sequence[float]) -> list[float]:
    """``python_contral.py``: greedy +0.1 coordinate ascent (see the module docstring for its quirks)."""
    r = [float(f) for f in start]
    k = len(r)
    best, i = -math.inf, 0
    final = _round1(r)
    while i < k:
        score = evaluate(_round1(r), i)
        if score > best:
            best = score
            r[i] += REFERENCE_STEP
        else:
            if r[i] > 1:
                r[i] -= REFERENCE_STEP
            final = _round1(r)
            i += 1
            if i < k:
                r[i] = 1.0 if r[i] < 0.1 else r[i] + REFERENCE_STEP
    return final


def default_bounds(rescaled: bool) -> tuple[float, float]:
    """Amplification bounds, or reduction bounds for methods that already rescale kept values (DARE)."""
    return REDUCE_BOUNDS if rescaled else AMPLIFY_BOUNDS


def search_factors(
    score: ScoreFn,
    n_partitions: int,
    strategy: str = "default",
    dpa_method: int = 1,
    bounds: Sequence[float] | None = None,
    tol: float = DEFAULT_TOL,
    max_calls: int | None = None,
    reference_init: Sequence[float] | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search one factor per partition; ``score(raw_factors)`` is higher-is-better.

    ``bounds`` and ``tol`` apply to the default strategy (default bounds: ``AMPLIFY_BOUNDS``); ``reference_init``
    to the reference loop. ``max_calls`` caps the objective calls of either strategy.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown search strategy {strategy!r}; choose one of {STRATEGIES}")
    if dpa_method not in DPA_METHODS:
        raise ValueError(
            f"dpa_method must be 1 (progressive, later partitions absent) or 2 (later partitions at "
            f"factor 1), got {dpa_method!r}"
        )
    k = int(n_partitions)
    settings: dict[str, Any] = {"strategy": strategy, "dpa_method": dpa_method}
    if strategy == "default":
        lo, hi = (float(b) for b in (AMPLIFY_BOUNDS if bounds is None else bounds))
        per_partition = calls_for_tolerance(lo, hi, tol)
        needed = 1 + k * per_partition
        if max_calls is not None and max_calls < needed:
            per_partition = (max_calls - 1) // k
            if per_partition < 2:
                raise ValueError(
                    f"max_calls={max_calls} is too few for {k} partition(s): the default search needs at "
                    f"least 1 + 2·{k} calls ({needed} for tol={tol})"
                )
            needed = 1 + k * per_partition
        settings.update(
            bounds=[lo, hi],
            tol=tol,
            calls_per_partition=per_partition,
            tolerance_achieved=(hi - lo) * GOLDEN ** (per_partition - 1),
            max_calls=needed,
        )
        total, cap = needed, needed
    else:
        start = [REFERENCE_START] + [0.0 if dpa_method == 1 else 1.0] * (k - 1)
        start = start if reference_init is None else [float(f) for f in reference_init]
        if len(start) != k:
            raise ValueError(f"reference_init needs {k} factors (one per partition), got {list(start)}")
        cap = REFERENCE_MAX_CALLS if max_calls is None else int(max_calls)
        settings.update(init=start, step=REFERENCE_STEP, max_calls=cap)
        total = None
    evaluate = ScoredCalls(score, total, cap, progress, desc=f"DPA search ({strategy}, method {dpa_method})")
    started, stopped = time.perf_counter(), None
    try:
        if strategy == "default":
            found = _default_search(evaluate, k, dpa_method, (lo, hi), per_partition)
            reach = settings["tolerance_achieved"]
            settings["at_bound"] = [i for i, f in enumerate(found) if min(f - lo, hi - f) <= reach]
            if settings["at_bound"]:
                logger.warning(
                    "DPA factors of partitions %s ended at the search bounds [%s, %s]; the optimum may "
                    "lie outside: widen the bounds",
                    settings["at_bound"],
                    lo,
                    hi,
                )
            factors = max(evaluate.history, key=lambda e: e.score).factors
        else:
            try:
                factors = _reference_loop(evaluate, start)
            except _BudgetExhausted:
                stopped = "max_calls"
                factors = max(evaluate.history, key=lambda e: e.score).factors
    finally:
        evaluate.close()
    return SearchResult(factors, evaluate.history, settings, time.perf_counter() - started, stopped)
