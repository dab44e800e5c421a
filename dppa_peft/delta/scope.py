"""Which checkpoint tensors are pruned: the 2-D linear weights inside decoder blocks.

The scope is a regular expression over tensor names, recorded in every adapter config, so it works for any decoder
architecture whose blocks live under a numbered container (``model.layers.N``, ``transformer.h.N``, ``blocks.N``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_SCOPE_PATTERN = r"^(?:.*\.)?(?:layers|h|blocks|block)\.(?P<block>\d+)\.(?P<module>.+)\.weight$"


@dataclass(frozen=True)
class TensorInfo:
    """A checkpoint tensor as the pruning methods see it (never the data itself)."""

    name: str
    shape: tuple[int, ...]
    block: int | None = None
    module: str | None = None

    @property
    def in_scope(self) -> bool:
        """True for the tensors that pruning methods act on (linear weights inside a block)."""
        return self.block is not None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class Scope:
    """Classifies tensor names into in-scope linears (with block index and module name) and the rest."""

    def __init__(self, pattern: str = DEFAULT_SCOPE_PATTERN) -> None:
        try:
            self._regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(
                f"invalid scope pattern {pattern!r}: {err}; pass a valid Python regular expression"
            ) from err
        missing = {"block", "module"} - set(self._regex.groupindex)
        if missing:
            raise ValueError(
                f"scope pattern {pattern!r} lacks the named groups {sorted(missing)}; "
                "write it like (?P<block>\\d+) ... (?P<module>.+)"
            )
        self.pattern = pattern

    def locate(self, name: str) -> tuple[int, str] | None:
        """``(block, module)`` of a tensor name the pattern matches, else None (the shape is not checked)."""
        match = self._regex.match(name)
        return None if match is None else (int(match["block"]), match["module"])

    def classify(self, name: str, shape: tuple[int, ...]) -> TensorInfo:
        """Return the TensorInfo of one tensor; only 2-D tensors matching the pattern are in scope."""
        located = self.locate(name)
        if located is None or len(shape) != 2:
            return TensorInfo(name=name, shape=tuple(shape))
        return TensorInfo(name=name, shape=tuple(shape), block=located[0], module=located[1])
