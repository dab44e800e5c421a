"""How a generation is scored, as in the DPPA paper: numeric answer extraction for math, and "the generated text
contains the correct choice" for classification (here: it names the correct choice and no other one)."""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBER = re.compile(r"-?\d[\d,]*")


def extract_number(generation: str) -> int | None:
    """The first integer in ``generation`` (thousands separators allowed), or None."""
    match = _NUMBER.search(generation)
    return int(match.group().replace(",", "")) if match else None


def named_choices(generation: str, choices: Sequence[str]) -> list[str]:
    """The choices that occur in ``generation`` as whole words, case-insensitively."""
    return [c for c in choices if re.search(rf"\b{re.escape(c)}\b", generation, flags=re.IGNORECASE)]


def numeric_correct(generation: str, answer: str) -> bool:
    """True when the first number in the generation equals the reference number."""
    return extract_number(generation) == int(answer)


def choice_correct(generation: str, answer: str, choices: Sequence[str]) -> bool:
    """True when the generation names the reference choice and no other choice."""
    return named_choices(generation, choices) == [answer]
