import pytest
import torch

from dppa_peft.methods import create_method
from dppa_peft.methods.dare import dare_keep_mask, drop_and_rescale
from dppa_peft.methods.selection import keep_count, top_k_indices
from dppa_peft.delta.scope import Scope

INFO = Scope().classify("model.layers.0.mlp.up_proj.weight", (2, 4))


def _info(shape, name="model.layers.0.mlp.up_proj.weight"):
    return Scope().classify(name, shape)


def test_keep_count_floors_with_epsilon():
    assert keep_count(0.29, 100) == 29  # int(100*0.29) == 28 in binary floats
    assert keep_count(0.1, 7) == 0 and keep_count(1.0, 7) == 7 and keep_count(1.5, 7) == 7


def test_magnitude_keeps_exact_top_k_values():
    delta = torch.tensor([[0.5, -0.1, 0.3, -0.7], [0.2, 0.05, -0.6, 0.4]])
    sparse = create_method("magnitude", 0.5).prune(INFO, delta, 0.5)
    assert sparse.nnz == 4
    assert sparse.indices.tolist() == [0, 3, 6, 7]
    assert sparse.values.tolist() == pytest.approx([0.5, -0.7, -0.6, 0.4])


@pytest.mark.parametrize("fill", ["ties", "zeros", "sorted"])
def test_top_k_on_large_tensors_is_exact_whatever_the_sample_sees(fill):
    """Above 4 x SAMPLE entries the threshold is bracketed from a sample; massive ties and a sample that misses the
    top (all large values in one corner) still give the exact top-k, lowest index first among ties."""
    n, k = 200_003, 20_000
    generator = torch.Generator().manual_seed(3)
    scores = (torch.randint(0, 5, (n,), generator=generator) * 0.25).float()
    if fill == "zeros":
        scores[: n - 500] = 0.0
    if fill == "sorted":
        scores = torch.arange(n, dtype=torch.float32)
        scores[-k - 3 :] = 1e9  # k + 3 equal maxima: the sample sees almost none of them
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    assert torch.equal(top_k_indices(scores, k), order.sort().values)


def test_ties_at_threshold_go_to_lowest_index():
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0, 0.0])
    assert top_k_indices(scores, 3).tolist() == [1, 2, 4]


def test_threshold_le_tie_mode_over_prunes_like_released_code():
    delta = torch.tensor([[1.0, 2.0, 2.0, 2.0], [3.0, 0.0, 2.0, 2.0]])
    released = create_method("magnitude", 0.5, tie_mode="threshold_le").prune(INFO, delta, 0.5)
    exact = create_method("magnitude", 0.5).prune(INFO, delta, 0.5)
    assert released.values.tolist() == [3.0]  # every |δ| <= t=2 pruned
    assert exact.nnz == 4 and exact.indices.tolist() == [1, 2, 3, 4]


def test_bf16_massive_ties_keep_exact_counts():
    torch.manual_seed(0)
    base = (torch.randn(512, 512) * 0.02).to(torch.bfloat16)
    ft = (base.float() + torch.randn(512, 512) * 1e-4).to(torch.bfloat16)
    delta = ft.float() - base.float()
    n = delta.numel()
    assert delta.abs().unique().numel() < 5000  # few distinct magnitudes: ties are massive
    method = create_method("magnitude", 0.9)
    for density in (0.1, 0.2, 0.37):
        sparse = method.prune(_info((512, 512)), delta, density)
        assert sparse.nnz == int(density * n + 1e-9)
        kept_min = sparse.values.abs().min()
        dropped = torch.ones(n, dtype=torch.bool)
        dropped[sparse.indices] = False
        assert delta.reshape(-1)[dropped].abs().max() <= kept_min


def test_magnitude_density_zero_one_and_all_zero_delta():
    method = create_method("magnitude", 0.5)
    delta = torch.randn(2, 4)
    assert method.prune(INFO, delta, 0.0).nnz == 0
    assert torch.equal(method.prune(INFO, delta, 1.0).to_dense(), delta)
    zero = method.prune(INFO, torch.zeros(2, 4), 0.5)
    assert zero.nnz == 0  # exact zeros are never stored: an all-zero delta is a no-op


def test_dare_test_vector_with_injected_mask():
    delta = torch.tensor([[0.2, -0.4], [0.6, -0.8]])
    keep = torch.tensor([[False, True], [True, False]])
    out = drop_and_rescale(delta, keep, 0.5).to_dense()
    assert torch.allclose(out, torch.tensor([[0.0, -0.8], [1.2, 0.0]]))


def test_dare_is_seeded_per_tensor_name_and_order_free():
    info_a, info_b = _info((64, 64), "model.layers.0.a.weight"), _info((64, 64), "model.layers.0.b.weight")
    method = create_method("dare", 0.9, seed=3)
    delta = torch.randn(64, 64)
    first = method.prune(info_a, delta, 0.1)
    method.prune(info_b, delta, 0.1)  # another tensor in between does not change a's mask
    again = create_method("dare", 0.9, seed=3).prune(info_a, delta, 0.1)
    assert torch.equal(first.indices, again.indices)
    assert not torch.equal(first.indices, method.prune(info_b, delta, 0.1).indices)
    assert not torch.equal(first.indices, create_method("dare", 0.9, seed=4).prune(info_a, delta, 0.1).indices)


def test_dare_statistics_unbiased_and_nested():
    info = _info((1000, 1000))
    delta = torch.full((1000, 1000), 0.5)
    sparse = create_method("dare", 0.9).prune(info, delta, 0.1)
    assert abs(sparse.density - 0.1) < 0.002  # binomial sd is 0.0003
    assert sparse.values.unique().tolist() == pytest.approx([5.0])
    assert abs(sparse.to_dense().mean().item() - 0.5) < 0.01
    wide = dare_keep_mask(info, 0.2, seed=0)
    narrow = dare_keep_mask(info, 0.1, seed=0)
    assert bool((wide | ~narrow).all())  # kept at 0.1 => kept at 0.2


def test_dare_density_edges():
    method = create_method("dare", 0.5)
    delta = torch.randn(2, 4)
    assert method.prune(INFO, delta, 0.0).nnz == 0
    assert torch.equal(method.prune(INFO, delta, 1.0).to_dense(), delta)


def test_unknown_method_and_parameter_errors():
    with pytest.raises(ValueError, match="unknown pruning method 'nope'"):
        create_method("nope", 0.5)
    with pytest.raises(ValueError, match=r"has no parameter \['seed'\]"):
        create_method("magnitude", 0.5, seed=1)
    with pytest.raises(ValueError, match="pruning rate must be in"):
        create_method("magnitude", 1.5)
