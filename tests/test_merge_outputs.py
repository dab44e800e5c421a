"""Merge outputs: the merged sparse adapter, the model folder's card, record and dtype, and replaying a record."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dppa_peft import SparseDeltaAdapter, load_merged, merge_to_adapter, merge_to_folder, prune
from dppa_peft.cli import main
from dppa_peft.merge import replay
from dppa_peft.publish.card import build_model_card
from tests.expected import load_weights
from tests.tiny_models import make_base, make_finetune


@pytest.fixture(scope="module")
def adapters(finetune_adapters):
    return finetune_adapters(0.8)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def peft_merged(base, adapter) -> dict[str, torch.Tensor]:
    return state(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload())


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize(("mode", "options"), [("ties", {}), ("dare_ties", {"density": 0.5, "seed": 7}), ("sum", {})])
def test_merged_adapter_loads_like_any_adapter(tmp_path, llama_pair, adapters, mode, options):
    base, _ = llama_pair
    weights = [0.6, 1.4]
    out = merge_to_adapter(base, adapters, tmp_path / "m", weights, mode, progress=False, **options)
    config = json.loads((out.directory / "adapter_config.json").read_text())
    assert config["merge"]["mode"] == mode and config["merge"]["params"] == {**config["merge"]["params"], **options}
    assert [a["weight"] for a in config["merge"]["adapters"]] == weights
    assert config["method"]["name"] == "merge" and config["target_modules"] is None
    union = {n: 0 for n in config["tensors"]}
    for adapter in adapters:
        for name, record in json.loads((adapter / "adapter_config.json").read_text())["tensors"].items():
            union[name] += record["nnz"]
    assert all(0 < config["tensors"][n]["nnz"] <= union[n] for n in union)  # union support, never dense in full

    direct = state(load_merged(base, adapters, weights, mode, progress=False, **options))
    via_peft = peft_merged(base, out.directory)
    assert_same(state(load_merged(base, [out.directory], progress=False)), via_peft)  # one kernel, bit for bit
    assert_same(via_peft, direct, atol=0.0 if mode != "sum" else 1e-6)  # sums: the merged values round once first
    assert not torch.equal(
        direct["model.layers.0.mlp.up_proj.weight"],
        AutoModelForCausalLM.from_pretrained(base).state_dict()["model.layers.0.mlp.up_proj.weight"],
    )

    card = (out.directory / "README.md").read_text()
    assert f"merge mode | `{mode}`" in card and "a0 (local folder)" in card and "| 1.4 |" in card
    assert str(tmp_path) not in card  # no local paths in a card
    published = str(build_model_card(out.config, repo_id="user/merged", eval_results={"gsm8k": {"acc,none": 0.5}}))
    assert "model-index" in published and "| gsm8k | acc | 0.5 |" in published and '"user/merged")' in published
    again = replay(out.directory, tmp_path / "again", progress=False)
    assert_same(load_weights(again), load_weights(out.directory))


def test_merge_folder_card_record_dtype_and_replay(tmp_path, llama_pair, adapters):
    base, _ = llama_pair
    out = merge_to_folder(
        base, adapters, tmp_path / "m", [1.0, 0.5], "dare_linear", dtype="bfloat16", progress=False, density=0.5, seed=1
    )
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert {t.dtype for t in load_weights(out).values()} == {torch.bfloat16}
    record = json.loads((out / "dppa_merge.json").read_text())
    assert record["output"] == "model" and record["mode"] == "dare_linear" and record["dtype"] == "bfloat16"
    assert record["params"] == {"density": 0.5, "seed": 1, "rescale": True}
    assert record["base"]["ref"] == str(base.resolve()) and record["adapters"][1]["weight"] == 0.5
    assert record["adapters"][0]["method"] == {"name": "magnitude", "rate": 0.8, "params": {"tie_mode": "index"}}
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "- dare_linear" in card and "weights dtype | bfloat16" in card
    assert main(["merge", "--from-record", str(out / "dppa_merge.json"), "--out", str(tmp_path / "again")]) == 0
    assert_same(load_weights(tmp_path / "again"), load_weights(out))


def test_float32_merge_of_a_bf16_base_is_not_rounded_to_bf16(tmp_path):
    base = make_base(tmp_path / "base", dtype=torch.bfloat16)
    adapter, _ = prune(
        base,
        make_finetune(base, tmp_path / "ft", steps=2),
        tmp_path / "a",
        method="magnitude",
        rate=0.5,
        progress=False,
    )
    out = merge_to_folder(base, [adapter.directory], tmp_path / "m", dtype="float32", progress=False)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    name = "model.layers.0.mlp.down_proj.weight"
    merged, base_w = load_weights(out)[name], load_weights(base)[name]
    expected = (
        base_w.float()
        .reshape(-1)
        .index_add(0, adapter.sparse_tensor(name).indices, adapter.sparse_tensor(name).values)
        .reshape(base_w.shape)
    )
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, expected, rtol=0, atol=0)
    assert not torch.equal(merged, merged.bfloat16().float())  # really fp32 values, not bf16 ones widened


def test_cli_out_adapter_and_validation_before_work(tmp_path, llama_pair, adapters, capsys):
    base, _ = llama_pair
    args = ["merge", "--base", str(base), "--adapter", str(adapters[0]), "--adapter", str(adapters[1])]
    assert main([*args, "--mode", "sum", "--density", "0.5", "--out-adapter", str(tmp_path / "x")]) == 2
    assert "--density does not apply to merge mode 'sum'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main([*args, "--out-adapter", str(tmp_path / "x"), "--mode", "linear", "--value-dtype", "bfloat16"]) == 0
    assert "merged adapter (sum) of 2 adapter(s)" in capsys.readouterr().out
    assert {t.dtype for k, t in load_weights(tmp_path / "x").items() if k.endswith("_values")} == {torch.bfloat16}
    assert main(["merge", "--from-record", str(tmp_path / "x"), "--base", str(base), "--out", str(tmp_path / "y")]) == 2
    assert "drop --base" in capsys.readouterr().err
    card = (tmp_path / "x" / "README.md").read_text()
    assert "dppa-peft merge --base base --adapter a0 --adapter a1 --out-adapter x" in card  # no local paths
    assert str(tmp_path) in json.loads((tmp_path / "x" / "adapter_config.json").read_text())["merge"]["command"]
    assert main(["merge", "--base", str(base), "--adapter", str(adapters[0])]) == 2
    assert "pass --out" in capsys.readouterr().err


def test_merged_adapter_bakes_the_amplification_factors(tmp_path, llama_pair):
    base, ft = llama_pair
    adapter, _ = prune(
        base, ft, tmp_path / "a", method="magnitude", rate=0.8, partition_rates=[0.9, 0.8], progress=False
    )
    config_path = adapter.directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["amplification"]["factors"] = [1.5, 0.75]  # as a DPA search would leave them
    config_path.write_text(json.dumps(config))
    merged = merge_to_adapter(base, [adapter.directory], tmp_path / "m", progress=False)
    stored = json.loads((merged.directory / "adapter_config.json").read_text())
    assert stored["amplification"] is None and not any(r["partition"] for r in stored["tensors"].values())
    assert_same(peft_merged(base, merged.directory), peft_merged(base, adapter.directory))
    assert not torch.equal(
        load_weights(merged.directory)["base_model.model.model.layers.0.mlp.up_proj.sparse_delta.weight_values"],
        load_weights(adapter.directory)["base_model.model.model.layers.0.mlp.up_proj.sparse_delta.weight_values"],
    )


def test_hub_inputs_are_recorded_at_their_commit(local_hub, hub_repo_id, tmp_path, llama_pair, adapters):
    base, _ = llama_pair
    SparseDeltaAdapter(adapters[0]).push_to_hub(hub_repo_id)
    out = merge_to_folder(
        base, [hub_repo_id, adapters[1]], tmp_path / "m", adapter_revisions=["main", None], progress=False
    )
    record = json.loads((out / "dppa_merge.json").read_text())["adapters"]
    assert record[0]["ref"] == hub_repo_id and record[0]["revision"] == "main"
    assert len(record[0]["commit"]) == 40 and record[1]["commit"] is None
    card = (out / "README.md").read_text()
    assert f"`{hub_repo_id}@main`" in card and "`a1 (local folder)`" in card
    again = replay(out, tmp_path / "again", progress=False)
    assert_same(load_weights(again), load_weights(out))


def test_checkpoint_sample_reads_rows_and_equals_the_full_sample(tmp_path):
    from safetensors.torch import save_file

    from dppa_peft.io.checkpoint import Checkpoint
    from dppa_peft.io.sampling import checkpoint_sample, tensor_sample

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(300, 7, generator=g),
        "b": torch.randn(5, 7, 3, generator=g).bfloat16(),
        "c": torch.randn(40, 1, generator=g),
        "d": torch.randn(9, generator=g),
        "e": torch.zeros(0, 4),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    checkpoint = Checkpoint(tmp_path)
    for name in tensors:
        assert checkpoint_sample(checkpoint, name) == tensor_sample(checkpoint.read(name)), name
    assert checkpoint.read_rows("a", 3, 5).tolist() == tensors["a"][3:5].tolist()
