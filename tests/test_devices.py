"""One ``device``/``dtype`` everywhere; adapters on accelerate-dispatched (and disk-offloaded) bases; the sparse
in-place kernel. This machine has no accelerator: the device paths run on the CPU and name no device type."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dppa_peft import load_merged, merge_to_folder, prune
from dppa_peft.core.devices import compute_dtype, resolve_device
from dppa_peft.core.errors import UserError
from dppa_peft.kernel.weights import add_sparse, add_sparse_
from dppa_peft.methods.base import FullDelta, SparseDelta
from tests.expected import PROMPT, load_weights, magnitude_merged_weights, top_k_reference


@pytest.fixture(scope="module")
def magnitude_adapter(tmp_path_factory, llama_pair) -> tuple:
    base, ft = llama_pair
    return prune(
        base, ft, tmp_path_factory.mktemp("devices") / "magnitude", method="magnitude", rate=0.9, progress=False
    )


def test_device_names_resolve_or_fail_clearly():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    with pytest.raises(UserError, match="is not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no such cuda device here"):
            resolve_device("cuda:3")
    assert compute_dtype("auto") == torch.float32 and compute_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(UserError, match="--dtype 'int8'"):
        compute_dtype("int8")


@pytest.mark.parametrize("method", ["magnitude", "dp"])
def test_prune_on_a_device_keeps_the_top_k_recomputed_from_the_checkpoints(tmp_path, llama_pair, method):
    """``device="auto"`` (the accelerator when there is one, else the CPU) keeps exactly the top-k ``|δ|`` at each
    tensor's planned density (DP: from its statistics pass), recomputed here from the safetensors files."""
    base, ft = llama_pair
    placed = prune(
        base, ft, tmp_path / "placed", method=method, rate=0.8, device="auto", dtype="float32", progress=False
    )[0]
    base_weights, ft_weights = load_weights(base), load_weights(ft)
    for name, record in placed.config.tensors.items():
        delta = ft_weights[name].float() - base_weights[name].float()
        expected = top_k_reference(delta, record.planned_density) if record.pruned else delta
        assert torch.equal(placed.sparse_tensor(name).to_dense(), expected), name
    assert sum(record.pruned for record in placed.config.tensors.values()) > 0
    assert placed.config.provenance["device"] == resolve_device("auto").type
    assert placed.config.provenance["compute_dtype"] == "float32"


def test_prune_in_bfloat16_keeps_the_planned_counts(tmp_path, llama_pair):
    base, ft = llama_pair
    exact = prune(base, ft, tmp_path / "fp32", method="magnitude", rate=0.9, progress=False)[0]
    half = prune(base, ft, tmp_path / "bf16", method="magnitude", rate=0.9, dtype="bfloat16", progress=False)[0]
    assert half.config.provenance["compute_dtype"] == "bfloat16"
    for name, record in exact.config.tensors.items():
        assert half.config.tensors[name].nnz == record.nnz
        if record.pruned:  # ranked at bf16 resolution: mostly the same entries
            overlap = torch.isin(half.sparse_tensor(name).indices, exact.sparse_tensor(name).indices).float().mean()
            assert overlap > 0.9


def test_merge_on_a_device_matches(tmp_path, llama_pair, magnitude_adapter):
    base, _ = llama_pair
    adapter = magnitude_adapter[0]
    expected = magnitude_merged_weights(base, llama_pair[1], 0.1)  # W_B + top-10% δ, from the safetensors files
    placed = load_weights(merge_to_folder(base, [adapter], tmp_path / "auto", device="auto", progress=False))
    assert placed.keys() == expected.keys() and all(torch.equal(placed[n], expected[n]) for n in expected)
    loaded = load_merged(base, [adapter], device="auto", progress=False).state_dict()
    assert all(torch.equal(loaded[n].cpu(), expected[n]) for n in expected)


@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bfloat16])
def test_in_place_kernel_touches_only_the_support_and_matches_the_dense_formula(target_dtype):
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(40, 50, generator=generator).to(target_dtype)
    a = SparseDelta(torch.tensor([0, 7, 99, 1999]), torch.tensor([1e-3, -2.0, 0.5, 3e-4]), (40, 50))
    b = SparseDelta(torch.tensor([7, 100, 1999]), torch.tensor([2.0, 1e-2, -3e-4]), (40, 50))
    full = FullDelta(torch.randn(2000, generator=generator) * 1e-3, (40, 50))
    c = SparseDelta(torch.arange(0, 2000, 3), torch.full((667,), 1e-3), (40, 50))  # with a: past the union limit
    for deltas, weights in (([a], [0.7]), ([a, b], [1.0, 0.5]), ([a, full, b], [1.0, 1.0, 2.0]), ([a, c], [1.0, 3.0])):
        expected = target.float().reshape(-1).clone()
        for delta, weight in zip(deltas, weights):  # the documented order: fp32, adapter after adapter, one cast
            expected = expected.index_add(0, delta.indices, delta.values * weight)
        expected = expected.to(target_dtype).reshape(target.shape)
        assert torch.equal(add_sparse(target, deltas, weights), expected)
        in_place = target.clone()
        assert add_sparse_(in_place, deltas, weights) is in_place and torch.equal(in_place, expected)
    assert torch.equal(add_sparse(target, [a]).reshape(-1)[1:7], target.reshape(-1)[1:7])  # untouched entries


def test_full_delta_has_implicit_positions():
    delta = FullDelta(torch.tensor([1.0, 0.0, 2.0, 3.0]), (2, 2))
    assert delta.nnz == 4 and delta.indices.tolist() == [0, 1, 2, 3]
    assert delta.to_dense().tolist() == [[1.0, 0.0], [2.0, 3.0]]


@pytest.fixture(scope="module")
def reference(llama_pair, magnitude_adapter) -> tuple:
    base, _ = llama_pair
    merged = load_merged(base, [magnitude_adapter[0]], progress=False)
    with torch.no_grad():
        return merged(PROMPT).logits, merged.state_dict()


def test_adapter_on_a_base_dispatched_with_a_device_map(llama_pair, magnitude_adapter, reference):
    base, _ = llama_pair
    model = AutoModelForCausalLM.from_pretrained(base, device_map={"": str(resolve_device("auto"))})
    peft_model = PeftModel.from_pretrained(model, str(magnitude_adapter[0].directory))
    with torch.no_grad():
        assert torch.equal(peft_model(PROMPT.to(model.device)).logits.cpu(), reference[0])


def test_adapter_on_a_disk_offloaded_base(tmp_path, llama_pair, magnitude_adapter, reference):
    """accelerate offloads every weight to disk (meta tensors until a hook loads them); PEFT re-dispatches the
    adapted model with the same ``max_memory``/``offload_folder``: forward and merge_and_unload stay exact."""
    base, _ = llama_pair
    memory = {"cpu": "100KB"}
    model = AutoModelForCausalLM.from_pretrained(
        base, device_map="auto", max_memory=memory, offload_folder=str(tmp_path / "offload")
    )
    assert "disk" in set(model.hf_device_map.values())
    assert any(p.device.type == "meta" for p in model.parameters())
    peft_model = PeftModel.from_pretrained(
        model, str(magnitude_adapter[0].directory), max_memory=memory, offload_folder=str(tmp_path / "offload-adapted")
    )
    with torch.no_grad():
        assert torch.equal(peft_model(PROMPT).logits, reference[0])
        merged = peft_model.merge_and_unload()
        assert torch.equal(merged(PROMPT).logits, reference[0])


def test_config_dtype_matches_merged_tensors(tmp_path, llama_pair, magnitude_adapter):
    base, _ = llama_pair
    out = merge_to_folder(base, [magnitude_adapter[0]], tmp_path / "bf16", dtype="bfloat16", progress=False)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_weights(out).values()} == {torch.bfloat16}


def test_cli_prune_and_merge_take_device_and_dtype(tmp_path, llama_pair):
    from dppa_peft.cli import main
    from tests.cli_args import flags, run_prune

    base, ft = llama_pair
    assert run_prune(base, ft, tmp_path / "a", device="auto", dtype="float32") == 0
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["provenance"]["device"] == resolve_device("auto").type
    merge = flags(base=base, adapter=tmp_path / "a", out=tmp_path / "m", device="auto", dtype="bfloat16")
    assert main(["merge", *merge]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
