"""Delta statistics of a fine-tune against its base (the paper's Table 4 plus relative size)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from ..analysis.stats import tensor_quantiles
from ..delta.scope import Scope


@dataclass(frozen=True)
class DeltaStats:
    """Statistics of ``δ = W_ft − W_B`` over the block linear weights (``relative_all``: over every tensor).

    ``relative`` = mean|δ| / mean|W_B|; ``max_relative`` = max|δ| / mean|W_B|; ``large_fraction``: the fraction of
    entries with |δ| > mean|W_B|; ``min``/``q10``/``q90``/``max``: signed quantiles, as in the paper's Table 4.
    """

    mean_abs_delta: float
    mean_abs_base: float
    relative: float
    relative_all: float
    max_abs_delta: float
    max_relative: float
    large_fraction: float
    min: float
    q10: float
    q90: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def delta_stats(base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor]) -> DeltaStats:
    """Statistics of the delta between two state dicts with the same names and shapes."""
    scope = Scope()
    linear = [name for name, tensor in base.items() if scope.classify(name, tuple(tensor.shape)).in_scope]
    delta = torch.cat([(finetuned[n].float() - base[n].float()).flatten() for n in linear])
    base_abs = torch.cat([base[n].float().abs().flatten() for n in linear])
    all_delta = sum((finetuned[n].float() - base[n].float()).abs().sum().item() for n in base)
    all_base = sum(base[n].float().abs().sum().item() for n in base)
    low, q10, q90, high = tensor_quantiles(delta, (0.0, 0.1, 0.9, 1.0))
    mean_abs, mean_base, max_abs = delta.abs().mean().item(), base_abs.mean().item(), delta.abs().max().item()
    return DeltaStats(
        mean_abs_delta=mean_abs,
        mean_abs_base=mean_base,
        relative=mean_abs / mean_base,
        relative_all=all_delta / all_base,
        max_abs_delta=max_abs,
        max_relative=max_abs / mean_base,
        large_fraction=(delta.abs() > mean_base).float().mean().item(),
        min=low,
        q10=q10,
        q90=q90,
        max=high,
    )
