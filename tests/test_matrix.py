"""The common test matrix: every registered pruning method and every merge mode through every way of using an
adapter, in fp32 and bf16 (PEFT's ``tests/testing_common.py`` does the same for every tuner).

Per pruning method and dtype: prune a tiny Llama pair → ``PeftModel.from_pretrained`` → logits equal the base plus
the method's delta recomputed independently from the safetensors files → merge/unmerge round trip exact →
``delete_adapter`` → ``merge_and_unload`` == ``load_merged`` == ``merge_to_folder``, bit for bit
(docs/algorithms.md §13). Each method's adapter also as DPA (two partitions, fixed factors) and with learned row
factors: PEFT load, the three merge paths and the stock-PEFT export against the reference (the plain adapter's export
too). Per merge mode and dtype (two adapters, weights 0.7 and 1.3, density 0.5 where the mode
takes one): ``load_merged`` == ``merge_to_folder`` bit for bit == the ``merge_to_adapter`` adapter merged by PEFT
(bit for bit for election modes, to fp32 rounding for sums, docs/algorithms.md §12.4), and ``sum`` equals
``W_B + Σ w_i·δ_i`` recomputed from the files. The parameters come from the registries, so a
newly registered method or mode is covered without editing this file. The models, references and checks are in
``tests/matrix.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peft import PeftModel

from dppa_peft import load_merged, merge_to_adapter, merge_to_folder
from dppa_peft.merge import MERGE_MODES, MergeMode, create_mode, mode_options
from dppa_peft.methods import METHODS
from tests.expected import load_weights
from tests.tiny_models import make_tokenizer
from tests.matrix import (
    DTYPES,
    MERGE_WEIGHTS,
    Matrix,
    assert_same_weights,
    check_export,
    check_merge_paths,
    check_peft_round_trip,
    check_variant,
    load_base,
    reference_deltas,
    reference_weights,
    weights_of,
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_through_peft(method: str, dtype: str, matrix: Matrix) -> None:
    check_peft_round_trip(
        method, matrix.pairs[dtype], matrix.adapter(method, dtype, 0), matrix.adapter(method, dtype, 1)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_merge_paths_bit_identical(method: str, dtype: str, matrix: Matrix, tmp_path: Path) -> None:
    check_merge_paths(method, matrix.pairs[dtype], matrix.adapter(method, dtype), tmp_path / "merged")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_exports_to_stock_peft(method: str, dtype: str, matrix: Matrix, tmp_path: Path) -> None:
    pair = matrix.pairs[dtype]
    expected = reference_weights(pair, [reference_deltas(pair, 0, method)])
    check_export(pair, matrix.adapter(method, dtype), expected, tmp_path / "export", "plain")


@pytest.mark.parametrize("variant", ["dpa", "learned"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_amplified_method_through_peft_merges_and_export(
    method: str, dtype: str, variant: str, matrix: Matrix, tmp_path: Path
) -> None:
    check_variant(method, variant, matrix.pairs[dtype], matrix.adapter(method, dtype, 0, variant), tmp_path)


def _learned_once(mode: str, folder: Path) -> str | MergeMode:
    """A mode that learns factors (it needs unlabeled prompts) as ONE instance, so that every output sums the same
    learned factors (a few steps; the learning itself is tested in test_learned_merge.py); other modes by name."""
    if "calibration" not in mode_options(mode):
        return mode
    (folder / "prompts.txt").write_text("1+2=3;\n4+5=9;\n6+7=13;\n")
    return create_mode(
        mode,
        calibration=[str(folder / "prompts.txt")] * 2,
        learn_steps=2,
        continuation_tokens=2,
        tokenizer=str(make_tokenizer(folder / "tokenizer")),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", sorted(name for name, cls in MERGE_MODES.items() if name == cls.name))
def test_merge_mode_paths_bit_identical(mode: str, dtype: str, matrix: Matrix, tmp_path: Path) -> None:
    pair = matrix.pairs[dtype]
    adapters = [matrix.adapter("magnitude", dtype, which) for which in (0, 1)]
    options = {"density": 0.5} if "density" in mode_options(mode) else {}
    mode = _learned_once(mode, tmp_path)
    in_memory = weights_of(
        load_merged(pair.base, adapters, MERGE_WEIGHTS, mode, dtype=pair.dtype, progress=False, **options)
    )
    folder = merge_to_folder(pair.base, adapters, tmp_path / "merged", MERGE_WEIGHTS, mode, progress=False, **options)
    assert_same_weights(load_weights(folder), in_memory, f"merge_to_folder vs load_merged ({mode})")
    base = load_weights(pair.base)
    assert all(not torch.equal(in_memory[name], base[name]) for name in base)  # every tensor was fine-tuned
    merged = merge_to_adapter(pair.base, adapters, tmp_path / "adapter", MERGE_WEIGHTS, mode, progress=False, **options)
    from_adapter = weights_of(PeftModel.from_pretrained(load_base(pair), str(merged.directory)).merge_and_unload())
    if MERGE_MODES[
        str(getattr(mode, "name", mode))
    ].needs_dense():  # one merged delta per tensor: the same single addition
        assert_same_weights(from_adapter, in_memory, f"merged adapter vs load_merged ({mode})")
    else:  # Σ w_i·δ_i is summed before it meets the base (docs/algorithms.md §12.4): equal to fp32 rounding
        for name, expected in in_memory.items():
            torch.testing.assert_close(
                from_adapter[name].float(),
                expected.float(),
                atol=1e-6,
                rtol=2 * torch.finfo(pair.dtype).eps,
                msg=f"merged adapter ({mode}): {name}",
            )
    if mode == "sum":
        deltas = [reference_deltas(pair, which, "magnitude") for which in (0, 1)]
        assert_same_weights(in_memory, reference_weights(pair, deltas, MERGE_WEIGHTS), "sum vs W_B + Σ w_i·δ_i")
