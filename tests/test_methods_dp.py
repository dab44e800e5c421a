"""DP (DPPA Dynamic Pruning): the worked example of docs/algorithms.md §5.6, its invariants and edge cases."""

from __future__ import annotations

import pytest
import torch
from tests.helpers_methods import kept_values, linear_info, observe_all

from dppa_peft.methods import create_method
from dppa_peft.methods.outliers import BlockOutliers, centred_norm, matrix_significance

Q, UP = "self_attn.q_proj", "mlp.up_proj"
WORKED = {
    (0, Q): [[0.011, -0.021, 0.032, -0.013], [0.024, 0.500, -0.015, 0.026]],
    (0, UP): [
        [0.012, 0.022, -0.033, 0.041, 0.014, -0.025, 0.036, 0.600],
        [-0.700, 0.017, 0.028, -0.019, 0.031, 0.023, -0.044, 0.016],
    ],
    (1, Q): [[0.051, -0.042, 0.033, -0.054], [0.045, -0.036, 0.057, 0.048]],
    (1, UP): [
        [0.021, -0.027, 0.034, 0.013, -0.018, 0.029, 0.022, -0.035],
        [0.015, 0.400, -0.026, 0.011, 0.037, -0.019, 0.024, 0.012],
    ],
    (2, Q): [[0.180, -0.092, 0.083, -0.074], [0.065, -0.056, 0.047, 0.038]],
    (2, UP): [
        [0.300, -0.012, 0.013, 0.014, -0.015, 0.016, 0.017, -0.018],
        [0.019, 0.020, -0.021, 0.022, 0.023, -0.024, 0.025, 0.026],
    ],
}
ORDER = [(0, Q), (0, UP), (1, Q), (1, UP), (2, Q), (2, UP)]


def worked_items() -> list:
    items = []
    for block, module in ORDER:
        delta = torch.tensor(WORKED[(block, module)], dtype=torch.float32)
        items.append((linear_info(block, module, tuple(delta.shape)), delta))
    return items


def worked_dp(**params: object):
    items = worked_items()
    return observe_all(create_method("dp", 0.6, lam=0.1, **params), items), items


def test_worked_example_statistics() -> None:
    items = worked_items()
    assert [matrix_significance(d.abs(), 5.0, "count")[1] for _, d in items] == [12.5, 12.5, 0, 6.25, 0, 6.25]
    blocks = BlockOutliers(3.0, "count")
    for info, delta in items:
        blocks.add_magnitude(info.block, delta.numel(), float(delta.abs().sum(dtype=torch.float64)))
    assert [blocks.abs_sum[b] / blocks.numel[b] for b in range(3)] == pytest.approx(
        [0.0959583, 0.0462083, 0.0508333], abs=1e-7
    )
    for info, delta in items:
        blocks.add_outliers(info.block, delta.abs())
    assert list(blocks.significance().values()) == pytest.approx([12.5, 4.166667, 8.333333], abs=1e-6)


def test_worked_example_code_variant_terms_and_densities() -> None:
    method, items = worked_dp()
    assert list(method.block_terms().values()) == pytest.approx([0.1, -0.1, 0.0], abs=1e-12)
    assert list(method.linear_terms().values()) == pytest.approx([0.08, 0.08, -0.1, -0.01, -0.1, -0.01], abs=1e-12)
    densities = [method.plan(info).density for info, _ in items]
    assert densities == pytest.approx([0.58, 0.58, 0.20, 0.29, 0.30, 0.39], abs=1e-12)


@pytest.mark.parametrize("tie_mode", ["index", "threshold_le"])
def test_worked_example_code_variant_kept_values(tie_mode: str) -> None:
    method, items = worked_dp(tie_mode=tie_mode)
    kept = [kept_values(method, info, delta, method.plan(info).density) for info, delta in items]
    assert kept == [
        [0.024, 0.026, 0.032, 0.5],
        sorted([-0.033, 0.041, -0.025, 0.036, 0.6, -0.7, 0.028, 0.031, -0.044]),
        [0.057],
        [-0.035, 0.034, 0.037, 0.4],
        [-0.092, 0.18],
        [-0.024, 0.022, 0.023, 0.025, 0.026, 0.3],
    ]


def test_worked_example_count_with_block_factor_5() -> None:
    """The "count, N_block = 5" row of docs/algorithms.md §5.6: count significance with N = 5 at both levels."""
    method, items = worked_dp(block_outlier_factor=5.0)
    assert list(method.block_terms().values()) == pytest.approx([0.1, -0.05, -0.05], abs=1e-12)
    assert [method.plan(info).density for info, _ in items] == pytest.approx(
        [0.58, 0.58, 0.25, 0.34, 0.25, 0.34], abs=1e-12
    )


@pytest.mark.parametrize(
    ("tie_mode", "q1_kept", "q2_kept"),
    [
        ("index", [-0.054, 0.057], [-0.092, 0.18]),
        ("threshold_le", [0.057], [0.18]),  # n·θ = 8·0.75 = 6 exactly: the released rule prunes the tie at t too
    ],
)
def test_worked_example_off_by_one(tie_mode: str, q1_kept: list, q2_kept: list) -> None:
    method, items = worked_dp(block_outlier_factor=5.0, tie_mode=tie_mode)
    (q1, d1), (q2, d2) = items[2], items[4]
    assert kept_values(method, q1, d1, method.plan(q1).density) == q1_kept
    assert kept_values(method, q2, d2, method.plan(q2).density) == q2_kept


def test_worked_example_paper_variant() -> None:
    """Magnitude-share significance, N = 5 at both levels (expected values from an independent numpy computation)."""
    method, items = worked_dp(dp_variant="paper")
    blocks = BlockOutliers(5.0, "magnitude")
    for info, delta in items:
        blocks.add_magnitude(info.block, delta.numel(), float(delta.abs().sum(dtype=torch.float64)))
    for info, delta in items:
        blocks.add_outliers(info.block, delta.abs())
    assert list(blocks.significance().values()) == pytest.approx([78.158923, 36.068530, 24.590164], abs=1e-5)
    assert list(method.block_terms().values()) == pytest.approx([0.1, -0.032001, -0.067999], abs=1e-6)
    densities = [method.plan(info).density for info, _ in items]
    assert densities == pytest.approx([0.557638, 0.558416, 0.267999, 0.376966, 0.232001, 0.335799], abs=1e-6)
    kept = [kept_values(method, info, delta, d) for (info, delta), d in zip(items, densities)]
    assert [len(k) for k in kept] == [4, 8, 2, 6, 1, 5]
    assert kept[4] == [0.18] and kept[2] == [-0.054, 0.057]


def test_variant_defaults() -> None:
    assert create_method("dp", 0.9).params.block_factor == 3.0
    assert create_method("dp", 0.9, dp_variant="paper").params.block_factor == 5.0
    assert create_method("dp", 0.9, dp_variant="paper", block_outlier_factor=2.5).params.block_factor == 2.5
    assert create_method("dp", 0.9).params.outlier_factor == 5.0
    with pytest.raises(ValueError, match="dp_variant"):
        create_method("dp", 0.9, dp_variant="both")
    with pytest.raises(ValueError, match="outlier_factor"):
        create_method("dp", 0.9, outlier_factor=0.0)


def random_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> list:
    """Four blocks of unequal sizes with heavy-tailed deltas, so every term is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for block in range(4):
        for module, shape in [(Q, (8, 16 + 8 * block)), ("self_attn.o_proj", (16, 8)), (UP, (24, 16))]:
            delta = torch.randn(shape, generator=g) * torch.rand(shape, generator=g) ** (3 + block)
            items.append((linear_info(block, module, shape), delta.to(dtype).float()))
    return items


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_terms_are_centred(variant: str) -> None:
    items = random_model()
    method = observe_all(create_method("dp", 0.9, dp_variant=variant), items)
    block_terms = torch.tensor(list(method.block_terms().values()), dtype=torch.float64)
    linear = method.linear_terms()
    sizes = torch.tensor([info.numel for info, _ in items], dtype=torch.float64)
    terms = torch.tensor([linear[info.name] for info, _ in items], dtype=torch.float64)
    assert float(block_terms.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float((terms * sizes).sum() / sizes.sum()) == pytest.approx(0.0, abs=1e-12)
    assert float(block_terms.abs().max()) == pytest.approx(0.08) and float(terms.abs().max()) == pytest.approx(0.08)
    assert len(set(block_terms.tolist())) == 4  # genuinely different blocks


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_rates_shift_densities_and_nest_masks(variant: str) -> None:
    items = random_model(seed=1)
    method = observe_all(create_method("dp", 0.9, dp_variant=variant), items)
    for info, delta in items:
        at_09, at_08 = method.plan(info, 0.9), method.plan(info, 0.8)
        assert at_08.unclipped == pytest.approx(at_09.unclipped + 0.1, abs=1e-12)
        kept = [
            set(method.prune(info, delta, method.plan(info, rate).density).indices.tolist())
            for rate in (0.95, 0.9, 0.8, 0.5)
        ]
        assert kept[0] <= kept[1] <= kept[2] <= kept[3]
        assert len(kept[2]) > len(kept[1])


def test_default_rate_and_clipping() -> None:
    items = random_model(seed=2)
    method = observe_all(create_method("dp", 0.97, lam=0.2), items)
    plans = [method.plan(info) for info, _ in items]
    assert any(p.unclipped < 0 for p in plans)
    assert all(0.0 <= p.density <= 1.0 for p in plans)
    assert all(p.density == max(0.0, p.unclipped) for p in plans)
    high = [method.plan(info, 0.0) for info, _ in items]
    assert any(p.unclipped > 1 for p in high) and all(p.density == min(1.0, p.unclipped) for p in high)


def test_bf16_massive_ties_keep_exact_counts() -> None:
    g = torch.Generator().manual_seed(3)
    items = []
    for block in range(3):
        levels = torch.tensor([1e-3, 2e-3, 3e-3, 5e-2], dtype=torch.bfloat16).float()
        choice = torch.multinomial(torch.tensor([0.5, 0.3, 0.19, 0.01]), 64 * 48, replacement=True, generator=g)
        sign = torch.where(torch.rand(64 * 48, generator=g) < 0.5, -1.0, 1.0)
        items.append((linear_info(block, Q, (64, 48)), (levels[choice] * sign).reshape(64, 48)))
    for tie_mode, exact in (("index", True), ("threshold_le", False)):
        method = observe_all(create_method("dp", 0.8, tie_mode=tie_mode), items)
        counts = []
        for info, delta in items:
            density = method.plan(info).density
            counts.append((method.prune(info, delta, density).nnz, int(density * delta.numel() + 1e-9)))
        assert all(nnz == k for nnz, k in counts) == exact, counts


def test_all_zero_model_and_zero_block() -> None:
    zero = [(linear_info(b, m, (4, 6)), torch.zeros(4, 6)) for b in range(3) for m in (Q, UP)]
    method = observe_all(create_method("dp", 0.9, dp_variant="paper"), zero)
    for info, delta in zero:
        plan = method.plan(info)
        assert plan.density == pytest.approx(0.1) and plan.unclipped == pytest.approx(0.1)
        assert method.prune(info, delta, plan.density).nnz == 0
    mixed = random_model(seed=4)
    mixed[:3] = [(info, torch.zeros_like(delta)) for info, delta in mixed[:3]]  # block 0 all zero
    for variant in ("code", "paper"):
        method = observe_all(create_method("dp", 0.9, dp_variant=variant), mixed)
        plans = [method.plan(info) for info, _ in mixed]
        assert all(p.unclipped == p.unclipped for p in plans)  # no NaN
        assert method.block_terms()[0] < 0


def test_tiny_tensors() -> None:
    items = [
        (linear_info(0, Q, (1, 1)), torch.tensor([[0.5]])),
        (linear_info(1, Q, (1, 2)), torch.tensor([[0.1, -0.3]])),
    ]
    method = observe_all(create_method("dp", 0.5), items)
    for info, delta in items:
        plan = method.plan(info)
        sparse = method.prune(info, delta, plan.density)
        assert sparse.nnz == int(plan.density * info.numel + 1e-9)
    assert method.prune(*items[1], 0.5).values.tolist() == pytest.approx([-0.3])


def test_one_statistics_pass_block_by_block() -> None:
    items = worked_items()
    method = create_method("dp", 0.9)
    assert method.statistics_passes == 1
    with pytest.raises(ValueError, match="1 statistics passes"):
        method.observe(*items[0], 1)
    method.observe(*items[0], 0)
    with pytest.raises(ValueError, match="observed twice"):
        method.observe(*items[0], 0)
    method.observe(*items[2], 0)
    with pytest.raises(ValueError, match="block 0 came back after other blocks"):
        method.observe(*items[1], 0)


def test_statistics_pass_order_matches_the_pipeline() -> None:
    """Deltas reach the statistics pass block by block even when the tensor names interleave the blocks."""
    from dppa_peft.prune.pipeline import collect_statistics

    items = worked_items()
    items = items[::2] + items[1::2]  # blocks 0, 1, 2, 0, 1, 2
    deltas = dict(items)

    class Pair:
        infos = [info for info, _ in items]

        def deltas(self, infos, desc, progress, device=None, dtype=None):
            return ((info, deltas[info]) for info in infos)

    method = create_method("dp", 0.6, lam=0.1)
    collect_statistics(method, Pair(), progress=False)
    assert list(method.block_terms().values()) == pytest.approx([0.1, -0.1, 0.0], abs=1e-12)


def test_centred_norm_guards() -> None:
    assert centred_norm([4.166666666666667] * 3, 0.08) == [0.0, 0.0, 0.0]
    assert centred_norm([0.0, 0.0], 0.08) == [0.0, 0.0]
    assert centred_norm([1.0, 2.0, 4.0], 0.08) == pytest.approx([-0.064, -0.016, 0.08])
    assert centred_norm([1.0, 3.0], 0.1, weights=[3.0, 1.0]) == pytest.approx([-0.1 / 3, 0.1])


def test_min_density_floor_keeps_every_module() -> None:
    """At rate 0.95 the worked example's −λ terms plan density 0 for three matrices; a floor of 0.05 keeps them."""
    plain = observe_all(create_method("dp", 0.95, lam=0.1), worked_items())
    floored = observe_all(create_method("dp", 0.95, lam=0.1, min_density=0.05), worked_items())
    infos = [info for info, _ in worked_items()]
    assert [plain.plan(i).density for i in infos] == pytest.approx([0.23, 0.23, 0, 0, 0, 0.04], abs=1e-12)
    assert [floored.plan(i).density for i in infos] == pytest.approx([0.23, 0.23, 0.05, 0.05, 0.05, 0.05], abs=1e-12)
    assert [floored.plan(i).unclipped for i in infos] == pytest.approx(
        [0.23, 0.23, -0.15, -0.06, -0.05, 0.04], abs=1e-12
    )
    assert floored.describe()["params"]["min_density"] == 0.05
    with pytest.raises(ValueError, match="min_density must be a density in"):
        create_method("dp", 0.9, min_density=1.5)
