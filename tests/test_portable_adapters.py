"""Portable adapters: the base stored as an absolute path or a Hub id, ``--base-model-id`` for a local copy (checked
against the local Hub server by sampled weights, nothing downloaded), loading and exporting from any folder, and a
pushed config and card without local paths or bookkeeping "metrics"."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants

from dppa_peft import load_merged, prune
from dppa_peft.io.base_ref import BaseIdMismatchError
from dppa_peft.cli import main
from tests.cli_args import run_prune
from tests.hub_fixtures import HUB_USER, upload_model
from tests.tiny_models import make_base

TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def test_relative_base_is_stored_absolute_and_loads_from_any_folder(llama_pair, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    base, finetuned = llama_pair
    monkeypatch.chdir(base.parent)
    adapter, _ = prune(base.name, finetuned, tmp_path / "adapter", method="magnitude", rate=0.9, progress=False)
    assert adapter.config.base_model_name_or_path == str(base.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    expected = _logits(load_merged(base, [adapter.directory], progress=False))
    model = AutoPeftModelForCausalLM.from_pretrained(adapter.directory).merge_and_unload()
    assert torch.equal(_logits(model), expected)
    assert main(["export", str(adapter.directory), "stock"]) == 0  # finds the base from the recorded path
    assert (elsewhere / "stock" / "adapter_config.json").is_file()


def test_base_model_id_is_checked_against_the_hub_and_recorded(llama_pair, base_on_hub, tmp_path):
    base, finetuned = llama_pair
    adapter, _ = prune(
        base, finetuned, tmp_path / "a", method="magnitude", rate=0.9, progress=False, base_model_id=base_on_hub
    )
    provenance = adapter.config.provenance
    assert (provenance["base_model_id"], provenance["base_model_id_checked"]) == (base_on_hub, True)
    assert adapter.config.base_model_name_or_path == str(base.resolve())  # still loads offline, from the copy
    assert ModelCard.load(adapter.directory / "README.md").data.base_model == base_on_hub


def test_a_wrong_base_model_id_fails_before_any_work(llama_pair, local_hub, tmp_path):
    other = upload_model(make_base(tmp_path / "other", seed=7), "other-base")
    with pytest.raises(BaseIdMismatchError, match="other weights"):
        prune(llama_pair[0], llama_pair[1], tmp_path / "a", method="dp", rate=0.9, progress=False, base_model_id=other)
    assert not (tmp_path / "a").exists()
    assert run_prune(*llama_pair, tmp_path / "b", method=None, base_model_id=f"{HUB_USER}/no-such-repo") == 2


def test_an_unreachable_hub_records_the_id_unchecked(llama_pair, tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    adapter, _ = prune(
        llama_pair[0],
        llama_pair[1],
        tmp_path / "a",
        method="magnitude",
        rate=0.9,
        progress=False,
        base_model_id="meta-llama/Llama-2-7b-hf",
    )
    assert adapter.config.provenance["base_model_id_checked"] is False


def test_push_names_the_hub_base_and_hides_local_paths(llama_pair, base_on_hub, hub_repo_id, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    base, finetuned = llama_pair
    out = tmp_path / "adapter"
    assert run_prune(base, finetuned, out) == 0
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            {
                "results": {
                    "toy": {"alias": "toy", "acc,none": 0.75, "acc_stderr,none": 0.1, "sample_len": 40, "samples": 40}
                }
            }
        )
    )
    assert main(["push", str(out), hub_repo_id, "--base-model-id", base_on_hub, "--eval-results", str(results)]) == 0
    folder = Path(HfApi().snapshot_download(hub_repo_id))
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base_on_hub and config["provenance"]["base_model_id_checked"]
    card = (folder / "README.md").read_text()
    assert str(tmp_path) not in card and str(base) not in card and os.sep + "tmp" not in card
    assert f"--out {out.name}" in card and "<local>/ft" in card  # the command and the fine-tune, without paths
    assert config["provenance"]["command"].endswith(f"--out {out.name} --method magnitude")  # pushed config too
    metrics = [r.metric_type for r in ModelCard(card).data.eval_results]
    assert metrics == ["acc"]  # not sample_len, samples or the stderr
    monkeypatch.chdir(tmp_path)
    model = AutoPeftModelForCausalLM.from_pretrained(hub_repo_id).merge_and_unload()  # base fetched by Hub id
    assert torch.equal(_logits(model), _logits(load_merged(base, [out], progress=False)))
