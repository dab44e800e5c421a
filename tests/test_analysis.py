"""Delta statistics (paper Table 8), density tables and the density heatmap (paper Figure 3)."""

from __future__ import annotations

import math

import pytest
import torch

from dppa_peft.analysis.stats import (
    QUANTILE_LEVELS,
    StreamingQuantiles,
    delta_statistics,
    density_grid,
    density_grid_from_config,
    density_heatmap,
    format_density_table,
    format_statistics_table,
    tensor_quantiles,
)
from dppa_peft.methods.base import DensityPlan
from dppa_peft.delta.scope import Scope, TensorInfo

Q, UP = "self_attn.q_proj", "mlp.up_proj"


def info(block: int, module: str, shape: tuple[int, ...] = (2, 2)) -> TensorInfo:
    return TensorInfo(f"model.layers.{block}.{module}.weight", shape, block, module)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001])
@pytest.mark.parametrize("spread", [1.0, 1e-7])  # 1e-7: every value in one histogram bin, kthvalue decides
def test_tensor_quantiles_are_lower_order_statistics(n: int, spread: float) -> None:
    values = 1.0 + torch.randn(n, generator=torch.Generator().manual_seed(n)) * spread
    expected = torch.quantile(values, torch.tensor(QUANTILE_LEVELS), interpolation="lower")
    assert tensor_quantiles(values) == expected.tolist()
    if spread < 1.0 and n >= 7:  # the histogram alone cannot decide: the kthvalue refinement is exercised
        histogram = StreamingQuantiles()
        histogram.update(values)
        assert any(b.exact_value() is None for b in histogram.rank_bins(QUANTILE_LEVELS))


def test_tensor_quantiles_above_2_pow_24() -> None:
    n = 2**24 + 1  # torch.quantile refuses this size
    values = torch.zeros(n)
    values[[5, 77, 100, n - 1]] = torch.tensor([-3.0, 1.5, 2.0, 7.0])
    second_largest = (n - 2) / (n - 1)
    assert tensor_quantiles(values, (0.0, 0.5, second_largest, 1.0)) == [-3.0, 0.0, 2.0, 7.0]


def model_stream(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(300, 200, generator=g) * 1e-3,
        torch.randn(5000, generator=g) ** 3 * 1e-2,
        torch.rand(1000, generator=g) - 0.2,
    ]


def test_streaming_quantiles_within_bound_and_order_free() -> None:
    stream = model_stream()
    exact = tensor_quantiles(torch.cat([t.reshape(-1) for t in stream]))
    forward, backward = StreamingQuantiles(), StreamingQuantiles()
    for t in stream:
        forward.update(t)
    for t in reversed(stream):
        backward.update(t)
    approx = forward.quantiles()
    assert approx == backward.quantiles()
    assert approx[0] == exact[0] and approx[-1] == exact[-1]
    for a, e in zip(approx, exact):
        assert abs(a - e) <= 2.0**-12 * abs(e)
    coarse = StreamingQuantiles(bits=12)
    for t in stream:
        coarse.update(t)
    errors = [abs(a - e) / abs(e) for a, e in zip(coarse.quantiles(), exact)]
    assert max(errors) > 2.0**-12 and max(errors) <= 2.0**-4  # the bound scales with the bits


def test_streaming_quantiles_exact_on_bf16_values() -> None:
    g = torch.Generator().manual_seed(1)
    stream = [
        (torch.randn(4000, generator=g) * 1e-3).bfloat16().float() * (torch.rand(4000, generator=g) > 0.3)
        for _ in range(3)
    ]
    histogram = StreamingQuantiles()
    for t in stream:
        histogram.update(t)
    assert histogram.quantiles() == tensor_quantiles(torch.cat(stream))
    assert histogram.total == 12000


def test_delta_statistics_rows() -> None:
    items = [
        (info(0, Q), torch.tensor([[0.5, -1.0], [0.25, 0.0]])),
        (TensorInfo("lm_head.weight", (1, 2)), torch.full((1, 2), 9.0)),
        (info(1, UP), torch.tensor([[2.0, -0.5], [0.125, 1.0]])),
    ]
    rows, model = delta_statistics(iter(items))
    assert [r.name for r in rows] == [items[0][0].name, items[2][0].name]
    assert rows[0].values == (-1.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.5)
    assert model.numel == 8 and not model.exact
    assert model.values == (-1.0, -1.0, -0.5, 0.0, 0.0, 0.125, 0.25, 0.25, 0.5, 1.0, 2.0)
    table = format_statistics_table(rows + [model]).splitlines()
    assert table[0].split() == [
        "tensor",
        "numel",
        "min",
        "10%",
        "20%",
        "30%",
        "40%",
        "50%",
        "60%",
        "70%",
        "80%",
        "90%",
        "max",
    ]
    assert table[3].split() == [
        "~all",
        "in-scope",
        "8",
        "-1",
        "-1",
        "-0.5",
        "0",
        "0",
        "0.125",
        "0.25",
        "0.25",
        "0.5",
        "1",
        "2",
    ]
    with pytest.raises(ValueError, match="no in-scope delta"):
        delta_statistics([items[1]])


PLANS = [
    (info(0, Q), DensityPlan(0.18, 0.18)),
    (info(0, UP), DensityPlan(0.0, -0.02)),
    (info(1, Q), DensityPlan(0.1, 0.1)),
    (TensorInfo("model.embed_tokens.weight", (3, 2)), DensityPlan(1, 1)),
]


def test_density_table_from_plans() -> None:
    grid = density_grid(PLANS)
    assert grid.blocks == (0, 1) and grid.modules == (UP, Q)
    assert format_density_table(grid) == (
        "block mlp.up_proj self_attn.q_proj\n"
        "    0     0.0000*           0.1800\n"
        "    1           -           0.1000\n"
        "* planned density outside [0, 1], clipped"
    )


def test_density_grid_from_config_matches_plans() -> None:
    recorded = {info.name: plan.density for info, plan in PLANS}
    grid = density_grid_from_config(recorded)
    assert dict(grid.density) == dict(density_grid(PLANS).density) and not grid.clipped
    assert Scope().locate("model.layers.12.mlp.down_proj.weight") == (12, "mlp.down_proj")
    assert Scope().locate("model.norm.weight") is None
    with pytest.raises(ValueError, match="no in-scope tensor"):
        density_grid_from_config({"lm_head.weight": 0.5})


def test_density_heatmap(tmp_path) -> None:
    grid = density_grid(PLANS)
    path = tmp_path / "density.png"
    figure = density_heatmap(grid, path, title="dp")
    shown = torch.tensor(figure.axes[0].images[0].get_array().filled(math.nan))
    torch.testing.assert_close(shown, torch.tensor([[0.0, 0.18], [math.nan, 0.1]]), equal_nan=True)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == [UP, Q]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_heatmap_shows_values_and_marks_clipped_cells(tmp_path):
    from dppa_peft.analysis.stats import DensityGrid, density_heatmap

    grid = DensityGrid(
        (0, 1), ("k", "q"), {(0, "k"): 0.1, (0, "q"): 0.1, (1, "k"): 0.12, (1, "q"): 0.0}, frozenset({(1, "q")})
    )
    figure = density_heatmap(grid, tmp_path / "h.png")
    axes = figure.axes[0]
    assert sorted(t.get_text() for t in axes.texts) == ["0.000*", "0.100", "0.100", "0.120"]
    assert [p.get_hatch() for p in axes.patches] == ["//"]
    assert figure.axes[1].get_ylim() == pytest.approx((0.0, 0.12))  # the colour bar spans the grid's own range
