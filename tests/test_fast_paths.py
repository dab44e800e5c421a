"""The CPU fast paths give exactly what the plain computations give (bench/RESULTS.md lists them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dppa_peft.format.encoding import bitmask_decode, bitmask_encode, encode
from dppa_peft.methods import create_method
from dppa_peft.methods.base import SparseDelta
from dppa_peft.methods.outliers import BlockOutliers, count_above, exact_abs_sum, matrix_significance, outlier_amount
from dppa_peft.methods.selection import SAMPLE, top_k_indices
from dppa_peft.delta.scope import TensorInfo
from dppa_peft.core.validate import all_finite


def bf16_delta(n: int, seed: int) -> torch.Tensor:
    """A delta as bf16 fine-tunes give them: mostly exact zeros and heavily tied magnitudes."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(n, generator=g) * 0.02).bfloat16()
    return (base.float() + torch.randn(n, generator=g) * 2e-5).bfloat16().float() - base.float()


def sorted_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(-scores.abs(), stable=True).indices[:k]  # lowest index first among ties
    return torch.sort(order).values


@pytest.mark.parametrize("n", [5 * SAMPLE, 300_001])
def test_top_k_on_tied_bf16_deltas_matches_a_full_sort(n):
    delta = bf16_delta(n, n)
    assert float((delta == 0).float().mean()) > 0.5  # the tie-heavy case the sorted candidates handle
    for k in (1, n // 10, n // 3, n - 1):
        assert torch.equal(top_k_indices(delta, k, absolute=True), sorted_top_k(delta, k))


def test_an_empty_kept_set_is_contiguous_and_encodes():
    delta = bf16_delta(5 * SAMPLE, 1)
    sparse = SparseDelta.from_indices(delta, top_k_indices(delta, 0, absolute=True))
    assert sparse.nnz == 0 and sparse.values.is_contiguous()
    encoded = encode(sparse, torch.bfloat16)
    assert encoded.values.reshape(-1).view(torch.uint8).numel() == 0  # what the safetensors writer does


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_finiteness_by_exponent_bits(dtype):
    values = torch.randn(600_001).to(dtype)
    assert all_finite(values) and all_finite(values[:0]) and all_finite(torch.full((3,), 6e4).to(dtype))
    for bad in (float("inf"), float("-inf"), float("nan")):
        for where in (0, 300_000, -1):
            broken = values.clone()
            broken[where] = bad
            assert not all_finite(broken)


def test_bitmask_decode_matches_the_torch_decode():
    indices = torch.sort(torch.randperm(100_003, generator=torch.Generator().manual_seed(0))[:20_000]).values
    assert torch.equal(bitmask_decode(bitmask_encode(indices, 100_003), 100_003), indices)


def test_outlier_count_compares_with_the_float32_threshold_like_torch():
    values = torch.tensor([1.0, 1.0000001192092896, 2.0])
    threshold = 1.00000006  # between two float32 values: both compare against float32(threshold)
    assert count_above(values, threshold) == int((values > threshold).sum()) == 1
    assert outlier_amount(values, threshold, "count") == 1.0


def _exact_block_significance(deltas: list[torch.Tensor], factor: float) -> float:
    total, numel = 0.0, 0
    for d in deltas:
        total += exact_abs_sum(d.abs())
        numel += d.numel()
    threshold = factor * total / numel
    return 100.0 * sum(int((d.abs() > threshold).sum()) for d in deltas) / numel


def test_bounded_sums_give_the_exact_significances():
    deltas = [bf16_delta(n, i).reshape(-1, 64) for i, n in enumerate((64 * 900, 64 * 2000, 64 * 1500))]
    for d in deltas:  # matrix level, against the plain float64 computation
        numel, exact = d.numel(), exact_abs_sum(d.abs())
        expected = 100.0 * int((d.abs() > 5.0 * exact / numel).sum()) / numel
        assert matrix_significance(d.abs(), 5.0, "count") == (exact, expected)
    blocks = BlockOutliers(3.0, "count")
    for d in deltas:
        blocks.add(0, d.abs(), None, (exact_abs_sum(d.abs()) * 0.999999, exact_abs_sum(d.abs()) * 1.000001))
    assert blocks.significance()[0] == _exact_block_significance(deltas, 3.0)  # wide bounds: the exact fallback


def test_dp_and_owl_plans_equal_the_exact_statistics():
    deltas = {(b, m): bf16_delta(64 * 512, 10 * b + i).reshape(512, 64) for b in range(3) for i, m in enumerate("qv")}
    infos = {
        key: TensorInfo(f"model.layers.{key[0]}.self_attn.{key[1]}_proj.weight", (512, 64), key[0], key[1])
        for key in deltas
    }
    for name in ("dp", "owl"):
        method = create_method(name, 0.9)
        for key, d in deltas.items():
            method.observe(infos[key], d, 0)
        densities = [method.plan(infos[key]).density for key in deltas]
        # the same statistics from the exact float64 sums only
        exact = create_method(name, 0.9)
        blocks = exact._blocks
        for key, d in deltas.items():
            if name == "dp":
                exact._passes.record(infos[key].name, 0)
                abs_sum, sig = matrix_significance(d.abs(), exact.params.outlier_factor, "count")
                exact._linears[infos[key].name] = type(next(iter(method._linears.values())))(key[0], d.numel(), sig)
                blocks.add(key[0], d.abs(), abs_sum)
            else:
                exact._passes.record(infos[key].name, 0)
                blocks.add(key[0], d.abs(), exact_abs_sum(d.abs()))
        assert [exact.plan(infos[key]).density for key in deltas] == densities
        assert np.isfinite(densities).all()
