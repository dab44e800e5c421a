"""OWL, DELLA, TIES trim and Breadcrumbs (docs/algorithms.md §6–§9, §14), and edge cases shared by every method."""

from __future__ import annotations

import pytest
import torch
from tests.helpers_methods import kept_values, linear_info, observe_all

from dppa_peft.methods import METHODS, create_method
from dppa_peft.methods.breadcrumbs import breadcrumbs_indices
from dppa_peft.methods.della import keep_probabilities, magprune
from dppa_peft.methods.magnitude import Magnitude
from dppa_peft.methods.outliers import centred_norm
from dppa_peft.methods.owl import owl_adjustments
from dppa_peft.methods.selection import threshold_le_indices

Q = "self_attn.q_proj"


def outlier_blocks(outliers_per_block: list[int]) -> list:
    """One 10×10 matrix per block: m entries of 10 and the rest 1, so the block outlier ratio (M = 5) is m %."""
    items = []
    for block, m in enumerate(outliers_per_block):
        delta = torch.ones(100)
        delta[torch.arange(m) * 7] = 10.0
        items.append((linear_info(block, Q, (10, 10)), delta.reshape(10, 10)))
    return items


# --- OWL ---------------------------------------------------------------------------------------------------------


def test_owl_vs_dppa_normalisation_example() -> None:
    owl = [0.3 + a for a in owl_adjustments([1.0, 2.0, 4.0], 0.08)]
    dppa = [0.3 + a for a in centred_norm([1.0, 2.0, 4.0], 0.08)]
    assert owl == pytest.approx([0.228889, 0.282222, 0.388889], abs=1e-6)
    assert dppa == pytest.approx([0.236, 0.284, 0.380], abs=1e-12)
    assert max(owl) - min(owl) == pytest.approx(0.16) and sum(owl) / 3 == pytest.approx(0.3)
    assert owl_adjustments([2.0, 2.0], 0.08) == [0.0, 0.0]


def test_owl_method_on_synthetic_deltas() -> None:
    items = outlier_blocks([1, 2, 4])
    method = observe_all(create_method("owl", 0.7), items)
    plans = [method.plan(info) for info, _ in items]
    assert [p.density for p in plans] == pytest.approx([0.228889, 0.282222, 0.388889], abs=1e-6)
    assert [method.prune(info, d, p.density).nnz for (info, d), p in zip(items, plans)] == [22, 28, 38]
    assert method.plan(items[0][0], 0.9).unclipped == pytest.approx(0.028889, abs=1e-6)


def test_dp_on_the_same_deltas_uses_max_abs_norm() -> None:
    """One matrix per block: the linear term equals the block term, so d = 0.3 + 2·T."""
    items = outlier_blocks([1, 2, 4])
    method = observe_all(create_method("dp", 0.7, block_outlier_factor=5.0), items)
    assert [method.plan(info).density for info, _ in items] == pytest.approx([0.172, 0.268, 0.46], abs=1e-12)


def test_owl_all_zero_and_order() -> None:
    zero = [(linear_info(b, Q, (3, 3)), torch.zeros(3, 3)) for b in range(2)]
    method = observe_all(create_method("owl", 0.5), zero)
    assert [method.plan(info).density for info, _ in zero] == [0.5, 0.5]
    assert method.prune(*zero[0], 0.5).nnz == 0
    with pytest.raises(ValueError, match="cannot plan"):
        create_method("owl", 0.5).plan(zero[0][0])


# --- DELLA -------------------------------------------------------------------------------------------------------


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-6)


DELLA_DELTA = torch.tensor([[0.1, -0.4, 0.2, 0.05], [0.3, 0.01, -0.02, -0.6]])


def test_della_keep_probabilities_and_rescaled_values() -> None:
    q = keep_probabilities(DELLA_DELTA, 0.5, 0.1)
    close(q, [[0.466667, 0.6, 0.533333, 0.4], [0.533333, 0.4, 0.466667, 0.6]])
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    out = magprune(DELLA_DELTA, 0.5, 0.1, keep=mask).to_dense()
    close(out, [[0.2142857, -0.6666667, 0, 0], [0, 0, -0.0428571, -1.0]])
    plain = magprune(DELLA_DELTA, 0.5, 0.1, keep=mask, rescale=False).to_dense()
    close(plain, [[0.1, -0.4, 0, 0], [0, 0, -0.02, -0.6]])


def test_della_is_unbiased() -> None:
    rows = DELLA_DELTA[0].repeat(50_000, 1)
    out = magprune(rows, 0.5, 0.1, generator=torch.Generator().manual_seed(0)).to_dense()
    assert out.mean(dim=0).tolist() == pytest.approx(DELLA_DELTA[0].tolist(), abs=0.01)
    assert (out != 0).float().mean(dim=0).tolist() == pytest.approx([0.466667, 0.6, 0.533333, 0.4], abs=0.01)


def test_della_rows_of_one_and_vectors() -> None:
    close(keep_probabilities(torch.tensor([[3.0], [-1.0]]), 0.4, 0.2), [[0.4], [0.4]])
    assert keep_probabilities(torch.tensor([0.3, -0.1, 0.2]), 0.5, 0.1).tolist() == pytest.approx([0.6, 0.4, 0.5])


def test_della_window_must_fit() -> None:
    with pytest.raises(ValueError, match="epsilon below 0.1"):
        create_method("della", 0.9, epsilon=0.15)
    with pytest.raises(ValueError, match="must lie in"):
        magprune(DELLA_DELTA, 0.95, 0.1)
    # d + ε = 1 is allowed: the largest |δ| of each row has keep probability 1, so every draw keeps it, unscaled
    q = keep_probabilities(DELLA_DELTA, 0.9, 0.1)
    close(q, [[0.8 + 0.2 / 3, 1.0, 0.8 + 0.4 / 3, 0.8], [0.8 + 0.4 / 3, 0.8, 0.8 + 0.2 / 3, 1.0]])
    for seed in range(5):
        kept = magprune(DELLA_DELTA, 0.9, 0.1, generator=torch.Generator().manual_seed(seed)).to_dense()
        assert kept[0, 1] == DELLA_DELTA[0, 1] and kept[1, 3] == DELLA_DELTA[1, 3], seed
        chosen = kept != 0
        torch.testing.assert_close(kept[chosen], (DELLA_DELTA / q)[chosen])  # the others divided by their q


def test_della_seeded_per_tensor_and_nested() -> None:
    info = linear_info(0, Q, (16, 32))
    delta = torch.randn(16, 32, generator=torch.Generator().manual_seed(5))
    method = create_method("della", 0.5, seed=7)
    first, again = method.prune(info, delta, 0.5), create_method("della", 0.5, seed=7).prune(info, delta, 0.5)
    assert torch.equal(first.indices, again.indices) and torch.equal(first.values, again.values)
    other = create_method("della", 0.5, seed=8).prune(info, delta, 0.5)
    assert not torch.equal(first.indices, other.indices)
    kept = [set(method.prune(info, delta, d).indices.tolist()) for d in (0.2, 0.5, 0.8)]
    assert kept[0] <= kept[1] <= kept[2] and len(kept[0]) < len(kept[2])


# --- TIES trim and Breadcrumbs -----------------------------------------------------------------------------------


def test_ties_trim_is_magnitude() -> None:
    assert issubclass(METHODS["ties"], Magnitude)
    info, delta = linear_info(0, Q, (1, 5)), torch.tensor([[0.5, -0.2, 0.1, 0.0, -0.3]])
    assert kept_values(create_method("ties", 0.4), info, delta, 0.6) == [-0.3, -0.2, 0.5]


BREADCRUMBS = torch.tensor([0.05, -0.4, 0.2, 0.1, -0.3, 0.01, 0.6, -0.02, 0.15, 0.08])


def test_breadcrumbs_vector() -> None:
    kept = BREADCRUMBS.reshape(-1)[breadcrumbs_indices(BREADCRUMBS, 0.5, 0.1)]
    assert sorted(kept.tolist()) == pytest.approx(sorted([-0.4, 0.2, 0.1, -0.3, 0.15]))


def test_breadcrumbs_without_outliers_is_magnitude_not_zero() -> None:
    for gamma in (0.0, 0.01):  # int(0.01·10) = 0: mergekit zeroes the tensor here
        kept = BREADCRUMBS.reshape(-1)[breadcrumbs_indices(BREADCRUMBS, 0.5, gamma)]
        assert sorted(kept.tolist()) == pytest.approx(sorted([-0.4, 0.2, -0.3, 0.6, 0.15]))


def test_breadcrumbs_deficit_drops_fewer_outliers() -> None:
    kept = BREADCRUMBS.reshape(-1)[breadcrumbs_indices(BREADCRUMBS, 0.9, 0.2)]  # k = 9, only 1 entry left for outliers
    assert kept.numel() == 9 and 0.6 not in kept.tolist()
    nested = [set(breadcrumbs_indices(BREADCRUMBS, d, 0.2).tolist()) for d in (0.3, 0.6, 0.8, 1.0)]
    assert nested[0] <= nested[1] <= nested[2] <= nested[3] and len(nested[3]) == 10


def test_threshold_le_position_ignores_float_noise() -> None:
    scores = torch.arange(1.0, 6.0)
    # n·(1 − d) = 5·(1 − 0.8) = 0.9999999999999998 in floats: the position is 1, so t = 2 and 3 entries are kept
    assert threshold_le_indices(scores, 0.8).tolist() == [2, 3, 4]


# --- every method ------------------------------------------------------------------------------------------------


def prepared(name: str, items: list, rate: float = 0.5, **params: object):
    return observe_all(create_method(name, rate, **params), items)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_density_zero_and_one(name: str) -> None:
    items = [
        (linear_info(b, Q, (6, 5)), torch.randn(6, 5, generator=torch.Generator().manual_seed(b))) for b in range(2)
    ]
    method = prepared(name, items, **({"gamma": 0.1} if name == "breadcrumbs" else {}))
    for info, delta in items:
        assert method.prune(info, delta, 0.0).nnz == 0
        full = method.prune(info, delta, 1.0)  # breadcrumbs: density 1 leaves no room for dropped outliers
        assert full.nnz == 30 and torch.equal(full.to_dense(), delta)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_all_zero_delta_keeps_nothing(name: str) -> None:
    items = [(linear_info(b, Q, (4, 4)), torch.zeros(4, 4)) for b in range(2)]
    method = prepared(name, items)
    for info, delta in items:
        plan = method.plan(info)
        assert plan.density == pytest.approx(0.5)
        sparse = method.prune(info, delta, plan.density)
        assert sparse.nnz == 0 and not sparse.values.isnan().any()


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1)])
def test_tiny_tensors(name: str, shape: tuple[int, int]) -> None:
    delta = torch.tensor([0.3, -0.7][: shape[0] * shape[1]]).reshape(shape)
    items = [(linear_info(0, Q, shape), delta)]
    method = prepared(name, items, rate=0.5, **({"epsilon": 0.2} if name == "della" else {}))
    density = method.plan(items[0][0]).density
    assert density == pytest.approx(0.5)
    sparse = method.prune(items[0][0], delta, density)
    assert sparse.shape == shape and not sparse.values.isnan().any()
    if name not in ("dare", "della"):
        assert sparse.nnz == delta.numel() // 2
        assert sparse.values.tolist() == ([] if delta.numel() == 1 else pytest.approx([-0.7]))


@pytest.mark.parametrize("name", ["magnitude", "ties", "owl", "dp", "breadcrumbs"])
def test_bf16_ties_keep_exact_counts(name: str) -> None:
    """bf16-valued deltas take few distinct |δ|; the default tie rule still keeps exactly floor(d·n)."""
    g = torch.Generator().manual_seed(9)
    levels = torch.tensor([1e-3, 2e-3, 4e-3], dtype=torch.bfloat16).float()
    items = []
    for block in range(3):
        choice = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), 40 * 30, replacement=True, generator=g)
        items.append((linear_info(block, Q, (40, 30)), levels[choice].reshape(40, 30) * (1 - 2 * (block % 2))))
    method = prepared(name, items, rate=0.75, **({"gamma": 0.05} if name == "breadcrumbs" else {}))
    for info, delta in items:
        density = method.plan(info).density
        assert method.prune(info, delta, density).nnz == int(density * 1200 + 1e-9)
