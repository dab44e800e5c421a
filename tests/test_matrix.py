"""The common test matrix: every registered pruning method and every merge mode through every way of using an
adapter, in fp32 and bf16 (PEFT's ``tests/testing_common.py`` does the same for every tuner).

Per pruning method and dtype: prune a tiny Llama pair → ``PeftModel.from_pretrained`` → logits equal the base plus
the method's delta recomputed independently from the safetensors files → merge/unmerge round trip exact →
``delete_adapter`` → ``merge_and_unload`` == ``load_merged`` == ``merge_to_folder``, bit for bit
(docs/algorithms.md §13). Per merge mode and dtype: ``load_merged`` == ``merge_to_folder`` bit for bit, and the
``sum`` mode equals ``W_B + Σ w_i·δ_i`` recomputed from the files. The parameters come from the registries, so a
newly registered method or mode is covered without editing this file. The models, references and checks are in
``tests/matrix.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dppa_peft import load_merged, merge_to_folder
from dppa_peft.merge import COMBINE_MODES
from dppa_peft.methods import METHODS
from tests.expected import load_weights
from tests.matrix import (
    DTYPES, MERGE_WEIGHTS, Matrix, assert_same_weights, check_merge_paths, check_peft_round_trip, reference_deltas,
    reference_weights, weights_of,
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_through_peft(method: str, dtype: str, matrix: Matrix) -> None:
    check_peft_round_trip(method, matrix.pairs[dtype], matrix.adapter(method, dtype, 0),
                          matrix.adapter(method, dtype, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_merge_paths_bit_identical(method: str, dtype: str, matrix: Matrix, tmp_path: Path) -> None:
    check_merge_paths(method, matrix.pairs[dtype], matrix.adapter(method, dtype), tmp_path / "merged")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", sorted(COMBINE_MODES))
def test_merge_mode_paths_bit_identical(mode: str, dtype: str, matrix: Matrix, tmp_path: Path) -> None:
    pair = matrix.pairs[dtype]
    adapters = [matrix.adapter("magnitude", dtype, which) for which in (0, 1)]
    in_memory = weights_of(load_merged(pair.base, adapters, MERGE_WEIGHTS, mode, dtype=pair.dtype, progress=False))
    folder = merge_to_folder(pair.base, adapters, tmp_path / "merged", MERGE_WEIGHTS, mode, progress=False)
    assert_same_weights(load_weights(folder), in_memory, f"merge_to_folder vs load_merged ({mode})")
    base = load_weights(pair.base)
    assert all(not torch.equal(in_memory[name], base[name]) for name in base)  # every tensor was fine-tuned
    if mode == "sum":
        deltas = [reference_deltas(pair, which, "magnitude") for which in (0, 1)]
        assert_same_weights(in_memory, reference_weights(pair, deltas, MERGE_WEIGHTS), "sum vs W_B + Σ w_i·δ_i")
