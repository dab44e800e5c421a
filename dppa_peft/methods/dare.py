"""DARE: random drop with keep probability d and rescale 1/d (Yu et al. 2023; docs/algorithms.md §7)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ..core.errors import UserError
from ..delta.scope import TensorInfo
from .base import PruningMethod, SparseDelta
from .registry import register


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, tensor name), so results do not depend on processing order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def dare_keep_mask(info: TensorInfo, density: float, seed: int) -> torch.Tensor:
    """``u < d`` with ``u ~ U(0,1)`` per entry: Bernoulli(d), and nested across densities for one seed."""
    uniform = torch.rand(info.shape, generator=tensor_generator(seed, info.name))
    return uniform < density


def drop_and_rescale(delta: torch.Tensor, keep: torch.Tensor, density: float, rescale: bool = True) -> SparseDelta:
    """Keep ``delta`` where ``keep`` is set and divide by ``density`` (when rescaling and density > 0)."""
    scale = 1.0 / density if rescale and density > 0 else 1.0
    return SparseDelta.from_mask(delta, keep, scale)


@dataclass(frozen=True)
class DareParams:
    seed: int = field(default=0, metadata={"help": "random seed; each tensor's mask is seeded from (seed, name)"})
    rescale: bool = field(default=True, metadata={"help": "divide kept entries by the density (DARE's rescale)"})


@register
class Dare(PruningMethod):
    name = "dare"
    summary = "drop entries at random (keep probability d) and rescale the rest by 1/d"
    Params = DareParams
    ranking = "random"

    @classmethod
    def rescales(cls, params: DareParams) -> bool:
        return bool(params.rescale)

    @classmethod
    def stored_members(
        cls,
        name: str,
        shape: tuple[int, ...],
        indices: torch.Tensor,
        values: torch.Tensor,
        densities: list[float],
        params: DareParams,
    ) -> list[torch.Tensor]:
        """DARE's uniform draws recomputed from (seed, tensor name), read at the stored entries."""
        info = TensorInfo(name=name, shape=shape)
        if not bool(dare_keep_mask(info, densities[-1], params.seed).reshape(-1)[indices].all()):
            raise UserError(
                f"{name}: the stored entries are not DARE's draw for seed {params.seed}; was the adapter edited?"
            )
        return [dare_keep_mask(info, d, params.seed).reshape(-1)[indices] for d in densities[:-1]]

    def prune(self, info: TensorInfo, delta: torch.Tensor, density: float) -> SparseDelta:
        keep = dare_keep_mask(info, density, self.params.seed)
        return drop_and_rescale(delta, keep, density, self.params.rescale)
