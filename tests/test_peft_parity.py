"""PEFT's own calls on SPARSE_DELTA adapters: add_weighted_adapter, delete_adapter, save_pretrained, push_to_hub."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, hf_hub_download
from peft import PeftModel
from peft.utils import merge_utils
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.utils import PushToHubMixin

from dppa_peft import SparseDeltaAdapter, load_merged, prune
from tests.expected import PROMPT, load_weights
from tests.hub_fixtures import REPO_ROOT, unique_repo_id

UP = "model.layers.1.mlp.up_proj.weight"


PROBE_THEN_IMPORT = """
import importlib.util, dppa_peft
importlib.util.find_spec("peft")  # what transformers' is_peft_available does, before anything imports peft
import peft.mapping
print("SPARSE_DELTA" in peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING)
"""


@pytest.mark.slow
def test_sparse_delta_registers_with_peft_after_an_availability_probe():
    """``import dppa_peft``, then transformers probes for peft, then peft is imported: SPARSE_DELTA is registered
    (the probe used to spend the import hook, and PeftModel.from_pretrained failed with KeyError: 'SPARSE_DELTA')."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE_THEN_IMPORT], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"


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


@pytest.mark.parametrize("combination", ["dare_ties", "dare_linear"])
def test_add_weighted_dare_is_the_merge_modes_dare(llama_pair, adapters, combination):
    base, _ = llama_pair
    model = loaded(base, adapters)
    model.add_weighted_adapter(["a0", "a1"], [1.0, 0.5], "m", combination_type=combination, density=0.5)
    semantics = {"semantics": "peft"} if combination == "dare_ties" else {}
    direct = load_merged(base, adapters, [1.0, 0.5], combination, density=0.5, progress=False, **semantics)
    merged = model.merge_and_unload(adapter_names=["m"])
    # the same masks; load_merged's linear sum adds each adapter's delta to the weight in turn (fp32 rounding per
    # adapter), the merged adapter holds their sum and adds it once
    atol = 0 if combination == "dare_ties" else 1e-7
    torch.testing.assert_close(merged.state_dict()[UP], direct.state_dict()[UP], rtol=0, atol=atol)
    with pytest.raises(ValueError, match="exists already"):
        model.add_weighted_adapter(["a0"], [1.0], "a1")


def test_add_weighted_dare_linear_drops_and_rescales_like_peft(llama_pair, adapters):
    """PEFT's dare_linear on one adapter: each stored entry is dropped or kept as w·δ/density (merge_utils.dare_linear
    draws its own mask; the kept values and their share are what both give)."""
    model = loaded(llama_pair[0], adapters)
    model.add_weighted_adapter(["a0"], [0.8], "m", combination_type="dare_linear", density=0.5)
    layer = model.base_model.model.model.layers[1].mlp.up_proj
    delta, [stored] = layer.get_delta_weight("m"), dense_deltas(adapters[:1], UP)
    kept = delta != 0
    torch.testing.assert_close(delta[kept], stored[kept] * 0.8 / 0.5, rtol=0, atol=0)
    peft_kept = merge_utils.dare_linear([stored], torch.tensor([0.8]), 0.5) != 0
    share, peft_share = (kept.sum() / (stored != 0).sum()).item(), (peft_kept.sum() / (stored != 0).sum()).item()
    assert abs(share - 0.5) < 0.05 and abs(peft_share - 0.5) < 0.05


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


EVAL_RESULTS = {"arc_easy": {"alias": "arc_easy", "acc,none": 0.61, "acc_stderr,none": 0.02, "sample_len": 100}}


def _hub_files(repo_id: str) -> dict[str, int]:
    """Path -> size of every file on the repo's main branch but .gitattributes (the same adapter weights have the
    same size: PEFT's save_pretrained writes the very tensors and header of dppa-peft)."""
    return {f.path: f.size for f in HfApi().list_repo_tree(repo_id, recursive=True) if f.path != ".gitattributes"}


def test_peft_push_to_hub_publishes_the_files_and_card_of_dppa_peft_push(llama_pair, base_on_hub, adapters):
    """PeftModel.push_to_hub (transformers' PushToHubMixin would write an empty template card on a new repo, and the
    old card on an existing one) publishes exactly what `dppa-peft push` does, on a new and on an existing repo."""
    base, _ = llama_pair
    ours, theirs, existing = (unique_repo_id(n) for n in ("dppa-push", "peft-push", "peft-push-existing"))
    options = {"eval_results": EVAL_RESULTS, "base_model_id": base_on_hub}
    SparseDeltaAdapter(adapters[0]).push_to_hub(ours, **options)
    SparseDeltaAdapter(adapters[1]).push_to_hub(existing)  # an existing repo holding another adapter and card
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapters[0]))
    assert type(model).push_to_hub is PushToHubMixin.push_to_hub  # only this instance pushes differently

    model.push_to_hub(theirs, **options)  # a new repo
    model.push_to_hub(existing, tags=["my-tag"], **options)
    reference = Path(hf_hub_download(ours, "README.md")).read_text()
    for repo in (theirs, existing):
        files = _hub_files(repo)
        assert files.pop("README.md") and files == {n: s for n, s in _hub_files(ours).items() if n != "README.md"}
        config = json.loads(Path(hf_hub_download(repo, "adapter_config.json")).read_text())
        assert config == json.loads(Path(hf_hub_download(ours, "adapter_config.json")).read_text())
        mine, pushed = load_weights(adapters[0]), load_file(hf_hub_download(repo, "adapter_model.safetensors"))
        assert mine.keys() == pushed.keys() and all(torch.equal(mine[k], pushed[k]) for k in mine)
        card = ModelCard.load(repo)
        assert card.data.base_model == base_on_hub and config["base_model_name_or_path"] == base_on_hub
        assert {"dppa-peft", "magnitude", "sparse-delta"} <= set(card.data.tags)
        [result] = card.data.eval_results
        assert (result.dataset_type, result.metric_type, result.metric_value) == ("arc_easy", "acc", 0.61)
        assert "pruned with `magnitude` at rate 0.7" in card.text and f'"{repo}"' in card.text
        assert card.text == ModelCard(reference).text.replace(ours, repo)
    renamed = reference.replace(ours.split("/")[1], theirs.split("/")[1])  # the card names its repo
    assert Path(hf_hub_download(theirs, "README.md")).read_text() == renamed
    assert "my-tag" in ModelCard.load(existing).data.tags


def test_peft_push_to_hub_of_named_adapters_puts_each_in_its_subfolder_with_its_card(hub_repo_id, llama_pair, adapters):
    """As PEFT lays them out: every adapter not named "default" in <name>/, each with dppa-peft's card; the pushed
    repo loads back with ``subfolder=`` to the same logits."""
    base, _ = llama_pair
    model = loaded(base, adapters)  # "a0" and "a1"
    model.push_to_hub(hub_repo_id)
    files = _hub_files(hub_repo_id)
    for i, name in enumerate(("a0", "a1")):
        assert files[f"{name}/adapter_model.safetensors"] == (adapters[i] / "adapter_model.safetensors").stat().st_size
        card = ModelCard.load(hf_hub_download(hub_repo_id, f"{name}/README.md"))
        assert "magnitude" in card.data.tags and "pruned with `magnitude` at rate 0.7" in card.text
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), hub_repo_id, subfolder="a1")
    single = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapters[1]))
    torch.testing.assert_close(logits(again), logits(single), rtol=0, atol=0)
