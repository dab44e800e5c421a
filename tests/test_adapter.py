import json
import textwrap

import pytest
import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM

import dppa_peft
from dppa_peft import BaseModelMismatchError, SparseDeltaConfig, load_merged, merge_to_adapter, merge_to_folder, prune
from dppa_peft.amplify.candidate import load_base_model
from tests.expected import PROMPT, load_weights, logits_with, magnitude_merged_weights
from tests.expected import logits as _logits
from tests.hub_fixtures import run_python
from tests.tiny_models import make_base, make_finetune


@pytest.fixture(scope="module")
def magnitude_adapter(tmp_path_factory, llama_pair):
    base, ft = llama_pair
    out = tmp_path_factory.mktemp("adapters") / "magnitude"
    adapter, summary = prune(base, ft, out, method="magnitude", rate=0.9, progress=False)
    return adapter, summary


def test_adapter_folder_records_the_plan(magnitude_adapter, llama_pair):
    adapter, summary = magnitude_adapter
    files = sorted(p.name for p in adapter.directory.iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((adapter.directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "SPARSE_DELTA"
    assert config["method"] == {"name": "magnitude", "rate": 0.9, "params": {"tie_mode": "index"}}
    assert config["base_model_name_or_path"] == str(llama_pair[0])
    assert len(config["base_fingerprint"]) == 32
    q = config["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    assert q["nnz"] == 409 and q["shape"] == [64, 64] and q["pruned"] and q["planned_density"] == pytest.approx(0.1)
    up = config["tensors"]["model.layers.1.mlp.up_proj.weight"]
    assert up["nnz"] == 819  # floor(0.1 * 128 * 64)
    assert config["tensors"]["model.norm.weight"]["encoding"] == "dense"
    assert summary.pruned_tensors == 14 and summary.dense_tensors == 7
    # per block q 409 + k 204 + v 204 + o 409 + gate/up/down 819 each, over 36864 entries
    assert summary.kept_density == pytest.approx(3683 / 36864)
    assert config["provenance"]["package_version"] == dppa_peft.__version__
    card = (adapter.directory / "README.md").read_text()
    assert "library_name: peft" in card and "- dppa-peft" in card and "- sparse-delta" in card


def test_peft_forward_merge_and_independent_reference_agree(magnitude_adapter, llama_pair):
    adapter, _ = magnitude_adapter
    base, ft = llama_pair
    expected = logits_with(base, magnitude_merged_weights(base, ft, 0.1))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter.directory))
    unmerged = _logits(model)
    assert torch.allclose(unmerged, expected, atol=1e-5)
    with model.disable_adapter():
        plain = _logits(model)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter really changes the model
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert torch.allclose(_logits(merged), expected, atol=1e-5)


@pytest.mark.slow
def test_fresh_process_loads_with_stock_peft_entry_points(magnitude_adapter, llama_pair, tmp_path):
    adapter, _ = magnitude_adapter
    base, ft = llama_pair
    script = textwrap.dedent(f"""
        import torch, dppa_peft
        from peft import AutoPeftModelForCausalLM, PeftModel
        from transformers import AutoModelForCausalLM
        prompt = torch.tensor({PROMPT.tolist()})
        model = AutoPeftModelForCausalLM.from_pretrained({str(adapter.directory)!r})
        with torch.no_grad():
            torch.save(model(prompt).logits, {str(tmp_path / "auto.pt")!r})
        plain = AutoModelForCausalLM.from_pretrained({str(base)!r})
        plain.load_adapter({str(adapter.directory)!r}, adapter_name="a")
        with torch.no_grad():
            torch.save(plain(prompt).logits, {str(tmp_path / "transformers.pt")!r})
    """)
    run_python(script)
    expected = logits_with(base, magnitude_merged_weights(base, ft, 0.1))
    for name in ("auto.pt", "transformers.pt"):
        assert torch.allclose(torch.load(tmp_path / name), expected, atol=1e-5), name


def test_several_adapters_active_and_merged(tmp_path, llama_pair, llama_finetunes):
    base, _ = llama_pair
    dirs = [
        prune(base, ft, tmp_path / f"a{i}", method="magnitude", rate=0.8, progress=False)[0].directory
        for i, ft in enumerate(llama_finetunes)
    ]
    weights = magnitude_merged_weights(base, llama_finetunes[0], 0.2)
    weights = magnitude_merged_weights(base, llama_finetunes[1], 0.2, start=weights)
    expected = logits_with(base, weights)

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(dirs[0]), adapter_name="a0")
    model.load_adapter(str(dirs[1]), adapter_name="a1")
    model.base_model.set_adapter(["a0", "a1"])
    assert torch.allclose(_logits(model), expected, atol=1e-5)
    merged = model.merge_and_unload(adapter_names=["a0", "a1"])
    assert torch.allclose(_logits(merged), expected, atol=1e-5)

    assert torch.allclose(_logits(load_merged(base, dirs, progress=False)), expected, atol=1e-5)
    out = merge_to_folder(base, dirs, tmp_path / "merged", progress=False)
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(out)), expected, atol=1e-5)


def test_weighted_merge(tmp_path, llama_pair, llama_finetunes):
    base, _ = llama_pair
    dirs = [
        prune(base, ft, tmp_path / f"a{i}", method="magnitude", rate=0.5, progress=False)[0].directory
        for i, ft in enumerate(llama_finetunes)
    ]
    weights = magnitude_merged_weights(base, llama_finetunes[0], 0.5, weight=0.3)
    weights = magnitude_merged_weights(base, llama_finetunes[1], 0.5, weight=0.7, start=weights)
    merged = load_merged(base, dirs, weights=[0.3, 0.7], progress=False)
    assert torch.allclose(_logits(merged), logits_with(base, weights), atol=1e-5)
    with pytest.raises(ValueError, match="1 weights for 2 adapters"):
        load_merged(base, dirs, weights=[1.0], progress=False)


def test_merge_folder_copies_model_files(tmp_path, magnitude_adapter, llama_pair):
    base, _ = llama_pair
    (base / "tokenizer_config.json").write_text("{}")
    try:
        out = merge_to_folder(base, [magnitude_adapter[0].directory], tmp_path / "m", progress=False)
    finally:
        (base / "tokenizer_config.json").unlink()
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "README.md",
        "config.json",
        "dppa_merge.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer_config.json",
    ]


def test_wrong_base_is_a_clear_error(tmp_path, magnitude_adapter):
    """Every path that puts an adapter on a base runs the one fingerprint check, with one message."""
    other = make_base(tmp_path / "other", seed=123)
    adapter = magnitude_adapter[0]
    expected = adapter.config.base_fingerprint
    message = rf"is not the base .* was pruned from .*: fingerprint [0-9a-f]{{32}} != {expected}; load the adapter on"
    with pytest.raises(BaseModelMismatchError, match=message):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(other), str(adapter.directory))
    for merge in (merge_to_folder, merge_to_adapter):
        with pytest.raises(BaseModelMismatchError, match=message):
            merge(other, [adapter.directory], tmp_path / "m", progress=False)
        assert not (tmp_path / "m").exists()  # nothing half-written
    with pytest.raises(BaseModelMismatchError, match=message):
        load_merged(other, [adapter.directory], progress=False)
    with pytest.raises(BaseModelMismatchError, match=message):
        load_base_model(other, adapter)  # amplify's base


def test_bf16_adapter_is_under_a_fifth_of_the_dense_delta(tmp_path):
    base = make_base(tmp_path / "base", layers=2, dtype=torch.bfloat16)
    ft = make_finetune(base, tmp_path / "ft", steps=2, lr=1e-2)
    adapter, summary = prune(base, ft, tmp_path / "a", method="magnitude", rate=0.9, progress=False)
    config = SparseDeltaConfig.from_pretrained(str(adapter.directory))
    pruned = {n: r for n, r in config.tensors.items() if r.pruned}
    dense_bf16 = sum(r.shape[0] * r.shape[1] * 2 for r in pruned.values())
    stored = sum(r.stored_bytes for r in pruned.values())
    assert stored == summary.adapter_bytes and dense_bf16 == summary.dense_delta_bytes
    assert stored / dense_bf16 < 0.20
    # at 10% density one gap byte per kept entry beats the 1/8-byte bitmask: (2 + 1) * 0.1 / 2 = 15%
    assert all(r.encoding == "gaps" for r in pruned.values())
    assert summary.size_ratio == pytest.approx(0.15, abs=0.002)
    assert adapter.nbytes < sum(p.stat().st_size for p in ft.glob("*.safetensors")) / 3


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_architectures_and_sharded_checkpoints(tmp_path, arch):
    base = make_base(tmp_path / "base", arch=arch, max_shard_size="100KB")
    ft = make_finetune(base, tmp_path / "ft", steps=3, max_shard_size="100KB")
    assert (base / "model.safetensors.index.json").exists()
    adapter, summary = prune(base, ft, tmp_path / "a", method="magnitude", rate=0.9, progress=False)
    tensors = adapter.config.tensors
    assert summary.pruned_tensors == 14  # q,k,v,o,gate,up,down x 2 blocks
    if arch == "qwen2":  # attention biases are 1-D: outside the pruning scope, kept dense
        assert tensors["model.layers.0.self_attn.q_proj.bias"].encoding == "dense"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter.directory))
    expected = logits_with(base, magnitude_merged_weights(base, ft, 0.1))
    assert torch.allclose(_logits(model), expected, atol=1e-5)


def test_config_loads_through_peft(magnitude_adapter):
    config = PeftConfig.from_pretrained(str(magnitude_adapter[0].directory))
    assert isinstance(config, SparseDeltaConfig)
    assert "model.layers.0.self_attn.q_proj" in config.module_names


def test_added_vocabulary_roundtrip(tmp_path, llama_pair):
    base, _ = llama_pair
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(140, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[128:] = torch.randn(12, 64)
        model.lm_head.weight.add_(0.01)
    model.save_pretrained(tmp_path / "ft")
    adapter, _ = prune(base, tmp_path / "ft", tmp_path / "a", method="magnitude", rate=0.5, progress=False)
    assert adapter.config.vocab_size == 140
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter.directory))
    merged = loaded.merge_and_unload()
    target = load_weights(tmp_path / "ft")
    assert torch.equal(merged.get_input_embeddings().weight, target["model.embed_tokens.weight"])
    assert torch.allclose(merged.lm_head.weight, target["lm_head.weight"])
    # PEFT's own save adds the whole embeddings of a grown vocabulary (its rule) unless told not to
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter.directory)).save_pretrained(
        tmp_path / "peft_saved", save_embedding_layers=False
    )
    assert load_weights(tmp_path / "peft_saved").keys() == load_weights(adapter.directory).keys()
    folder = merge_to_folder(base, [adapter.directory], tmp_path / "m", progress=False)
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 140
    assert torch.equal(load_weights(folder)["model.embed_tokens.weight"], target["model.embed_tokens.weight"])


@pytest.mark.parametrize("method", ["dp", "owl"])
def test_two_pass_methods_keep_the_top_entries_of_the_true_delta(tmp_path, llama_pair, method):
    """The statistics passes read every delta first; the pruning pass must still see W_ft - W_B exactly."""
    base, ft = llama_pair
    adapter, _ = prune(base, ft, tmp_path / method, method=method, rate=0.8, progress=False)
    base_w, ft_w = load_weights(base), load_weights(ft)
    for name, record in adapter.config.tensors.items():
        delta = (ft_w[name] - base_w[name]).reshape(-1)
        sparse = adapter.sparse_tensor(name)
        assert torch.equal(sparse.values, delta[sparse.indices]), name
        if record.pruned:
            top = torch.sort(delta.abs(), descending=True, stable=True).indices[: sparse.nnz].sort().values
            assert torch.equal(sparse.indices, top), name
