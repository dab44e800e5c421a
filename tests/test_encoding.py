import pytest
import torch

from dppa_peft.format.encoding import (
    bitmask_decode,
    bitmask_encode,
    encode,
    encode_dense,
    gaps_decode,
    gaps_encode,
    gaps_size,
)
from dppa_peft.methods.base import SparseDelta


@pytest.mark.parametrize("numel,count", [(1, 0), (1, 1), (9, 9), (1000, 10), (1000, 600), (70000, 3)])
def test_index_codecs_roundtrip(numel, count):
    indices = torch.randperm(numel, generator=torch.Generator().manual_seed(numel))[:count].sort().values
    assert torch.equal(bitmask_decode(bitmask_encode(indices, numel), numel), indices)
    assert torch.equal(gaps_decode(gaps_encode(indices)), indices)


def test_gap_bytes_escape_long_gaps():
    indices = torch.tensor([0, 300, 301, 1000])
    # gaps 0, 299 = 255+44, 0, 698 = 2*255+188
    assert gaps_encode(indices).tolist() == [0, 255, 44, 0, 255, 255, 188]
    assert gaps_size(indices) == 7


def test_encoding_choice_by_size():
    low = SparseDelta(torch.tensor([5, 900]), torch.ones(2), (1000,))
    high = SparseDelta(torch.arange(0, 1000, 2), torch.ones(500), (1000,))
    assert encode(low, torch.float32).encoding == "gaps"
    enc = encode(high, torch.bfloat16)
    assert enc.encoding == "bitmask" and enc.index.numel() == 125 and enc.values.dtype == torch.bfloat16
    assert enc.stored_bytes == 500 * 2 + 125
    with pytest.raises(ValueError, match="dense encoding needs every entry"):
        encode(low, torch.float32, dense=True)
    dense = encode_dense(torch.tensor([[1.5, 0.0], [-2.0, 3.0]]), torch.bfloat16)
    assert dense.encoding == "dense" and dense.index is None and dense.values.tolist() == [1.5, 0.0, -2.0, 3.0]
    assert dense.values.dtype == torch.bfloat16 and dense.indices().tolist() == [0, 1, 2, 3]
