"""PEFT's own calls on SPARSE_DELTA adapters: add_weighted_adapter, delete_adapter, save_pretrained, push_to_hub."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import hf_hub_download
from peft import PeftModel
from peft.utils import merge_utils
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dppa_peft import SparseDeltaAdapter, load_merged, prune
from tests.expected import PROMPT, load_weights

UP = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def adapters(finetune_adapters):
    return finetune_adapters(0.7)


@pytest.fixture(scope="module")
def bf16_adapter(tmp_path_factory, llama_pair):
    """bf16 stored values (PEFT keeps them in fp32 in memory)."""
    base, ft = llama_pair
    out = tmp_path_factory.mktemp("parity_bf16") / "a"
    return prune(base, ft, out, method="magnitude", rate=0.7, progress=False, value_dtype="bfloat16")[0].directory


def loaded(base, adapters) -> PeftModel:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapters[0]), adapter_name="a0")
    model.load_adapter(str(adapters[1]), adapter_name="a1")
    return model


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT).logits


def dense_deltas(adapters, name: str) -> list[torch.Tensor]:
    return [SparseDeltaAdapter(a).sparse_tensor(name).to_dense() for a in adapters]


@pytest.mark.parametrize(
    ("combination", "kwargs", "reference"),
    [
        ("linear", {}, lambda d, w: merge_utils.task_arithmetic(d, w)),
        ("magnitude_prune", {"density": 0.2}, lambda d, w: merge_utils.magnitude_prune(d, w, 0.2)),
        ("ties", {"density": 0.2}, lambda d, w: merge_utils.ties(d, w, 0.2, "total")),
        (
            "ties",
            {"density": 0.25, "majority_sign_method": "frequency"},
            lambda d, w: merge_utils.ties(d, w, 0.25, "frequency"),
        ),
    ],
)
def test_add_weighted_adapter_is_peft_merge_utils(tmp_path, llama_pair, adapters, combination, kwargs, reference):
    base, _ = llama_pair
    weights = [0.6, 1.4]
    model = loaded(base, adapters)
    model.add_weighted_adapter(["a0", "a1"], weights, "m", combination_type=combination, **kwargs)
    assert set(model.peft_config) == {"a0", "a1", "m"}
    expected_delta = reference(dense_deltas(adapters, UP), torch.tensor(weights))
    layer = model.base_model.model.model.layers[1].mlp.up_proj
    torch.testing.assert_close(layer.get_delta_weight("m"), expected_delta, rtol=0, atol=0)

    model.set_adapter("m")
    unmerged = logits(model)
    model.save_pretrained(tmp_path / "saved", selected_adapters=["m"])
    merged = model.merge_and_unload(adapter_names=["m"])
    base_w = AutoModelForCausalLM.from_pretrained(base).state_dict()
    torch.testing.assert_close(merged.state_dict()[UP], base_w[UP] + expected_delta, rtol=0, atol=0)
    torch.testing.assert_close(logits(merged), unmerged, rtol=0, atol=1e-5)

    saved = tmp_path / "saved" / "m"
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["merge"]["mode"] == ("sum" if combination == "linear" else combination)
    assert "Merged sparse delta adapter" in (saved / "README.md").read_text()
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(saved)).merge_and_unload()
    torch.testing.assert_close(again.state_dict()[UP], merged.state_dict()[UP], rtol=0, atol=0)


def test_add_weighted_dare_ties_is_the_merge_modes_dare_ties(llama_pair, adapters):
    base, _ = llama_pair
    model = loaded(base, adapters)
    model.add_weighted_adapter(["a0", "a1"], [1.0, 0.5], "m", combination_type="dare_ties", density=0.5)
    direct = load_merged(base, adapters, [1.0, 0.5], "dare_ties", density=0.5, semantics="peft", progress=False)
    merged = model.merge_and_unload(adapter_names=["m"])
    torch.testing.assert_close(merged.state_dict()[UP], direct.state_dict()[UP], rtol=0, atol=0)
    with pytest.raises(ValueError, match="exists already"):
        model.add_weighted_adapter(["a0"], [1.0], "a1")


def test_add_weighted_adapter_errors(llama_pair, adapters):
    model = loaded(llama_pair[0], adapters)
    with pytest.raises(ValueError, match=r"adapters \['zz'\] do not exist"):
        model.add_weighted_adapter(["a0", "zz"], [1, 1], "m")
    with pytest.raises(ValueError, match="density does not apply to combination_type 'linear'"):
        model.add_weighted_adapter(["a0", "a1"], [1, 1], "m", density=0.5)
    with pytest.raises(ValueError, match="unknown merge mode 'svd'"):
        model.add_weighted_adapter(["a0", "a1"], [1, 1], "m", combination_type="svd")
    assert set(model.peft_config) == {"a0", "a1"}


def test_delete_adapter(llama_pair, adapters):
    base, _ = llama_pair
    model = loaded(base, adapters)
    model.delete_adapter("a1")
    assert set(model.peft_config) == {"a0"} and not any(".a1." in k for k in model.state_dict())
    single = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapters[0]))
    torch.testing.assert_close(logits(model), logits(single), rtol=0, atol=0)


def test_peft_save_pretrained_writes_the_same_compact_files(tmp_path, llama_pair, bf16_adapter):
    base, _ = llama_pair
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(bf16_adapter))
    model.save_pretrained(tmp_path / "saved")
    ours, peft_written = bf16_adapter, tmp_path / "saved"
    assert sorted(p.name for p in peft_written.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    for name in ("README.md", "adapter_config.json"):
        assert (peft_written / name).read_text() == (ours / name).read_text(), name
    mine, theirs = load_file(ours / "adapter_model.safetensors"), load_file(peft_written / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys()  # no base embeddings / lm_head
    for key in mine:
        assert theirs[key].dtype == mine[key].dtype and torch.equal(theirs[key], mine[key]), key
    assert mine[f"base_model.model.{UP.removesuffix('.weight')}.sparse_delta.weight_values"].dtype == torch.bfloat16
    size = (ours / "adapter_model.safetensors").stat().st_size
    assert abs((peft_written / "adapter_model.safetensors").stat().st_size - size) < 100  # header order only


def test_peft_push_to_hub_uploads_the_compact_files(local_hub, hub_repo_id, llama_pair, adapters):
    """transformers' push_to_hub keeps the repo's card (its template on a new repo): publish the card once with
    dppa-peft (``SparseDeltaAdapter.push_to_hub`` / ``dppa-peft push``) and PEFT's later pushes keep it."""
    base, _ = llama_pair
    SparseDeltaAdapter(adapters[1]).push_to_hub(hub_repo_id)
    card = open(hf_hub_download(hub_repo_id, "README.md")).read()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapters[0]))
    model.push_to_hub(hub_repo_id)
    weights = load_file(hf_hub_download(hub_repo_id, "adapter_model.safetensors"))
    assert weights.keys() == load_weights(adapters[0]).keys()
    config = json.loads(open(hf_hub_download(hub_repo_id, "adapter_config.json")).read())
    assert config == json.loads((adapters[0] / "adapter_config.json").read_text())
    assert open(hf_hub_download(hub_repo_id, "README.md")).read().strip() == card.strip()
