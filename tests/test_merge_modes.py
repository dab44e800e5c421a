"""Merge modes (``dppa_peft.merge.modes``): exact agreement with ``peft.utils.merge_utils`` on dense tensors."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils

from dppa_peft.merge.modes import MERGE_MODES, MergedTensor, create_mode, mode_options
from dppa_peft.methods.base import SparseDelta
from dppa_peft.methods.dare import tensor_generator

NAME = "model.layers.0.mlp.up_proj.weight"


def deltas(seed: int = 0, shape: tuple[int, ...] = (6, 10), count: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(count)]


def sparse(tensors: list[torch.Tensor]) -> list[SparseDelta]:
    return [SparseDelta.from_mask(t, torch.ones_like(t, dtype=torch.bool)) for t in tensors]


def merged(mode: str, tensors: list[torch.Tensor], weights: list[float], **options) -> torch.Tensor:
    return create_mode(mode, **options).merge(NAME, sparse(tensors), weights).as_delta().to_dense()


def dare_dropped(tensors: list[torch.Tensor], density: float, seed: int = 0) -> list[torch.Tensor]:
    """DARE's documented drop: keep where u < density, u ~ U(0,1) seeded by (seed, '<tensor>#<adapter>')."""
    out = []
    for index, tensor in enumerate(tensors):
        keep = torch.rand(tensor.shape, generator=tensor_generator(seed, f"{NAME}#{index}")) < density
        out.append(torch.where(keep, tensor * (1.0 / density), 0.0))
    return out


def exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_registry_names_options_and_aliases() -> None:
    assert sorted(MERGE_MODES) == [
        "adamerging",
        "dare_linear",
        "dare_ties",
        "della",
        "della_linear",
        "learned",
        "linear",
        "magnitude_prune",
        "sum",
        "task_arithmetic",
        "ties",
    ]
    assert MERGE_MODES["linear"] is MERGE_MODES["sum"] is MERGE_MODES["task_arithmetic"]
    assert mode_options("sum") == [] and mode_options("magnitude_prune") == ["density"]
    assert mode_options("ties") == ["consensus", "semantics", "density"]
    assert mode_options("della") == ["consensus", "semantics", "density", "seed", "rescale", "epsilon"]
    assert [MERGE_MODES[m].needs_dense() for m in ("sum", "dare_linear", "ties", "della")] == [False, False, True, True]
    with pytest.raises(ValueError, match="unknown merge mode 'mean'"):
        create_mode("mean")
    with pytest.raises(ValueError, match=r"has no option \['density'\]"):
        create_mode("sum", density=0.5)
    with pytest.raises(ValueError, match="consensus='total' is not one of"):
        create_mode("ties", consensus="total")
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        create_mode("dare_ties", density=0.0)
    with pytest.raises(ValueError, match="DELLA keep probabilities"):
        create_mode("della", density=0.1, epsilon=0.2)


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.7, -1.3, 0.4]])
def test_linear_is_peft_task_arithmetic(weights: list[float]) -> None:
    tensors = deltas(1)
    exact(merged("linear", tensors, weights), merge_utils.task_arithmetic(tensors, torch.tensor(weights)))


@pytest.mark.parametrize("density", [0.3, 0.5])
def test_magnitude_prune_is_peft(density: float) -> None:
    tensors, weights = deltas(2), [0.5, 1.5, -1.0]
    exact(
        merged("magnitude_prune", tensors, weights, density=density),
        merge_utils.magnitude_prune(tensors, torch.tensor(weights), density),
    )


@pytest.mark.parametrize(("consensus", "peft_method"), [("sum", "total"), ("count", "frequency")])
def test_ties_with_density_is_peft(consensus: str, peft_method: str) -> None:
    tensors, weights = deltas(3), [0.7, 1.3, 0.4]
    expected = merge_utils.ties(tensors, torch.tensor(weights), 0.4, peft_method)
    exact(merged("ties", tensors, weights, density=0.4, consensus=consensus, semantics="peft"), expected)
    assert not torch.allclose(merged("ties", tensors, weights, density=0.4, consensus=consensus), expected)


@pytest.mark.filterwarnings("ignore:The density 1.0")
def test_ties_default_keeps_every_stored_entry() -> None:
    tensors = deltas(4)
    exact(merged("ties", tensors, [1, 1, 1]), merge_utils.ties(tensors, torch.ones(3), 1.0))


@pytest.mark.filterwarnings("ignore:The density 1.0")
def test_dare_modes_are_peft_on_the_documented_drop() -> None:
    tensors, weights = deltas(5), [0.7, 1.3, 0.4]
    dropped = dare_dropped(tensors, 0.5, seed=3)
    kept = sum(int((d != 0).sum()) for d in dropped)
    assert 70 < kept < 110  # ~half of 180 entries survive
    exact(
        merged("dare_linear", tensors, weights, density=0.5, seed=3),
        merge_utils.task_arithmetic(dropped, torch.tensor(weights)),
    )
    exact(
        merged("dare_ties", tensors, weights, density=0.5, seed=3, semantics="peft"),
        merge_utils.ties(dropped, torch.tensor(weights), 1.0),
    )
    assert not torch.equal(
        merged("dare_linear", tensors, weights, density=0.5, seed=4),
        merged("dare_linear", tensors, weights, density=0.5, seed=3),
    )


def test_della_without_window_is_dare_ties_and_prefers_large_entries() -> None:
    tensors, weights = deltas(6, shape=(8, 200)), [1.0, 0.5, 2.0]
    exact(
        merged("della", tensors, weights, density=0.5, epsilon=0.0), merged("dare_ties", tensors, weights, density=0.5)
    )
    survivors = create_mode("della_linear", density=0.5, epsilon=0.4).merge(NAME, sparse(tensors[:1]), [1.0])
    kept = torch.zeros(tensors[0].numel(), dtype=torch.bool)
    kept[survivors.as_delta().indices] = True
    large = tensors[0].abs().reshape(-1) > tensors[0].abs().median()
    assert kept[large].float().mean() > kept[~large].float().mean() + 0.3  # keep p from 0.1 to 0.9 by rank


def test_sparse_inputs_stay_sparse_and_union_support() -> None:
    a = SparseDelta(torch.tensor([0, 3]), torch.tensor([1.0, -2.0]), (2, 3))
    b = SparseDelta(torch.tensor([3, 5]), torch.tensor([2.0, 0.5]), (2, 3))
    total = create_mode("sum").merge(NAME, [a, b], [1.0, 1.0])
    assert isinstance(total, MergedTensor) and total.deltas == [a, b]  # the kernel adds them one by one
    delta = total.as_delta()
    assert delta.indices.tolist() == [0, 5] and delta.values.tolist() == [1.0, 0.5]  # -2 + 2 cancels: not stored
    ties = create_mode("ties").merge(NAME, [a, b], [1.0, 1.0]).as_delta()
    assert ties.indices.tolist() == [0, 3, 5] and ties.values.tolist() == [1.0, 2.0, 0.5]  # 0 vote elects +
    target = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    exact(total.apply(target), torch.tensor([[1.0, 1, 2], [3, 4, 5.5]], dtype=torch.bfloat16))
