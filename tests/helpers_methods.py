"""Small helpers shared by the pruning-method tests."""

from __future__ import annotations

import torch

from dppa_peft.methods import PruningMethod
from dppa_peft.delta.scope import TensorInfo


def linear_info(block: int, module: str, shape: tuple[int, ...]) -> TensorInfo:
    """The TensorInfo of ``model.layers.{block}.{module}.weight``."""
    return TensorInfo(name=f"model.layers.{block}.{module}.weight", shape=tuple(shape), block=block, module=module)


def observe_all(method: PruningMethod, items: list[tuple[TensorInfo, torch.Tensor]]) -> PruningMethod:
    """Run the method's statistics passes over every item, as the pipeline does; return the method."""
    if method.needs_statistics:
        for pass_index in range(method.statistics_passes):
            for info, delta in items:
                method.observe(info, delta, pass_index)
    return method


def kept_values(method: PruningMethod, info: TensorInfo, delta: torch.Tensor, density: float) -> list[float]:
    """The kept values of one pruned tensor, sorted, rounded to 6 decimals."""
    return sorted(round(v, 6) for v in method.prune(info, delta, density).values.tolist())
