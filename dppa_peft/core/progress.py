"""Progress bars that stay in logs: a tqdm bar that is kept when done on a terminal, and one summary line per step
(``desc: N unit in S s``) on stderr when it is not a terminal (a log file, CI), instead of carriage-return noise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


class SummaryLine:
    """The tqdm calls this package makes (iterate, update, set_postfix*, close), printed as one line at the end."""

    def __init__(self, iterable: Iterable[Any] | None, desc: str, total: int | None, unit: str) -> None:
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else _length(iterable)
        self.unit = unit
        self.n = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.n += 1
        self.close()

    def __enter__(self) -> SummaryLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        postfix = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit} in {time.perf_counter() - self.start:.1f} s{postfix}", file=sys.stderr)


def _length(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str = "",
    total: int | None = None,
    unit: str = "it",
    disable: bool = False,
    **kwargs: Any,
) -> Any:
    """A kept tqdm bar on a terminal, a :class:`SummaryLine` elsewhere, nothing with ``disable``."""
    if disable:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=True, **kwargs)
    return SummaryLine(iterable, desc, total, unit)
