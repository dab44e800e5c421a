"""Per-tensor merge math: the TIES vectors of docs/algorithms.md §12.2 and agreement with ``peft.utils.merge_utils``."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils

from dppa_peft.merge.combine import COMBINE_MODES, combine, combine_options
from dppa_peft.methods import create_method
from dppa_peft.delta.scope import TensorInfo

TAUS = [[0.5, -0.2, 0.1, 0, -0.3], [-0.4, 0.3, 0.2, 0.1, -0.1], [0.1, -0.6, -0.3, 0.2, 0.05]]
TRIMMED = [[0.5, -0.2, 0, 0, -0.3], [-0.4, 0.3, 0.2, 0, 0], [0, -0.6, -0.3, 0.2, 0]]


def trim(deltas: list[torch.Tensor], density: float) -> list[torch.Tensor]:
    """TIES trim with the project's "ties" pruning method."""
    method = create_method("ties", 1.0 - density)
    info = TensorInfo(name="t", shape=tuple(deltas[0].shape))
    return [method.prune(info, d, density).to_dense() for d in deltas]


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-6)


def test_trim_vectors() -> None:
    trimmed = trim([torch.tensor(t) for t in TAUS], 0.6)
    for actual, expected in zip(trimmed, TRIMMED):
        close(actual, expected)


@pytest.mark.parametrize(
    ("weights", "options", "expected"),
    [
        ([1, 1, 1], {}, [0.5, -0.4, -0.3, 0.2, -0.3]),
        ([1, 1, 1], {"semantics": "peft"}, [0.5, -0.4, -0.3, 0.2, -0.3]),
        ([1, 1, 1], {"consensus": "count"}, [0.5, -0.4, 0.2, 0.2, -0.3]),
        ([1, 0.5, 2], {"semantics": "peft"}, [0.5, -0.7, -0.6, 0.4, -0.3]),
        ([1, 0.5, 2], {}, [0.5, -0.466667, -0.3, 0.2, -0.3]),
    ],
)
def test_ties_vectors(weights: list[float], options: dict, expected: list[float]) -> None:
    close(combine("ties", [torch.tensor(t) for t in TRIMMED], weights, **options), expected)


def test_sum() -> None:
    close(combine("sum", [torch.tensor(t) for t in TRIMMED], [1, 1, 1]), [0.1, -0.5, -0.1, 0.2, -0.3])
    close(combine("sum", [torch.tensor(t) for t in TRIMMED], [1, 0.5, 2]), [0.3, -1.25, -0.5, 0.4, -0.3])


def test_zero_vote_elects_plus_and_nothing_agreeing_gives_zero() -> None:
    deltas = [torch.tensor([1.0, 0.0, -2.0]), torch.tensor([-1.0, 0.0, 1.0])]
    close(combine("ties", deltas, [1, 1]), [1.0, 0.0, -2.0])
    close(combine("ties", deltas, [1, 1], consensus="count"), [1.0, 0.0, 1.0])
    close(combine("ties", deltas, [1, 3]), [-1.0, 0.0, 1.0])  # weighted votes 1 - 3 < 0 and -2 + 3 > 0


def random_deltas(seed: int, shape: tuple[int, ...] = (7, 9), count: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(count)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("consensus", "peft_method"), [("sum", "total"), ("count", "frequency")])
def test_ties_matches_peft(seed: int, consensus: str, peft_method: str) -> None:
    deltas, density = random_deltas(seed), 0.4
    weights = [1.0, 1.0, 1.0]
    expected = merge_utils.ties(deltas, torch.tensor(weights), density, peft_method)
    for semantics in ("mergekit", "peft"):  # both agree with peft when every weight is 1
        actual = combine("ties", trim(deltas, density), weights, consensus=consensus, semantics=semantics)
        torch.testing.assert_close(actual, expected)
    weights = [0.7, 1.3, 0.4]
    expected = merge_utils.ties(deltas, torch.tensor(weights), density, peft_method)
    actual = combine("ties", trim(deltas, density), weights, consensus=consensus, semantics="peft")
    torch.testing.assert_close(actual, expected)
    assert not torch.allclose(combine("ties", trim(deltas, density), weights, consensus=consensus), expected)


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.7, -1.3, 0.4]])
def test_sum_matches_peft_task_arithmetic(weights: list[float]) -> None:
    deltas = random_deltas(2, shape=(4, 3, 5))
    torch.testing.assert_close(
        combine("sum", deltas, weights), merge_utils.task_arithmetic(deltas, torch.tensor(weights))
    )


def test_inputs_are_checked() -> None:
    deltas = [torch.zeros(2), torch.zeros(2)]
    assert sorted(COMBINE_MODES) == ["sum", "ties"]
    assert combine_options("ties") == ["consensus", "semantics"] and combine_options("sum") == []
    with pytest.raises(ValueError, match="unknown combine mode 'mean'"):
        combine("mean", deltas, [1, 1])
    with pytest.raises(ValueError, match=r"no option \['density'\]"):
        combine("ties", deltas, [1, 1], density=0.5)
    with pytest.raises(ValueError, match="2 deltas but 1 weights"):
        combine("sum", deltas, [1])
    with pytest.raises(ValueError, match="share a shape"):
        combine("sum", [torch.zeros(2), torch.zeros(3)], [1, 1])
    with pytest.raises(ValueError, match="unknown consensus"):
        combine("ties", deltas, [1, 1], consensus="total")
    with pytest.raises(ValueError, match="at least one"):
        combine("sum", [], [])


def test_bf16_inputs_give_fp32() -> None:
    deltas = [torch.tensor([0.5, -0.25]).bfloat16(), torch.tensor([0.25, 0.25]).bfloat16()]
    merged = combine("ties", deltas, [1, 1])
    assert merged.dtype == torch.float32
    close(merged, [0.375, 0.25])  # -0.25 + 0.25 = 0 elects +


def test_chunked_application_matches_whole_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    deltas, weights = random_deltas(3, shape=(13, 11)), [0.5, 1.5, -1.0]
    whole = combine("ties", deltas, weights)
    monkeypatch.setattr("dppa_peft.merge.combine.COMBINE_CHUNK", 10)
    chunked = combine("ties", deltas, weights)
    assert chunked.shape == (13, 11)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)
