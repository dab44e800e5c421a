"""Adapters on the Hub, against the local Hub server with the real huggingface_hub, PEFT and transformers clients:
push (one commit, card metadata), pull by id in a fresh process, revisions, offline cache, private repos, clear
errors, an interrupted push, and merge at load from several Hub repos."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dppa_peft import BaseModelMismatchError, SparseDeltaAdapter, load_merged, open_adapter, prune
from dppa_peft.cli import main
from tests.cli_args import flags, run_prune
from tests.expected import PROMPT, logits
from tests.hub_fixtures import HUB_USER, OTHER_TOKEN, run_python, unique_repo_id, upload_model
from tests.hub_server import DROPPED
from tests.tiny_models import make_base

ADAPTER_REPO_FILES = [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"]


def _folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def hub_models(base_on_hub, llama_pair, llama_finetunes, tmp_path_factory) -> dict:
    """The tiny base and fine-tunes on the Hub, and adapters pruned from them BY HUB ID (the fine-tune repo's main is
    fine-tune 0, its branch 'dev' fine-tune 1; the base is pinned by commit sha)."""
    api = HfApi()
    ids = {"base": base_on_hub, "ft": upload_model(llama_pair[1], "ft"), "fts": upload_model(llama_finetunes[0], "fts")}
    api.create_branch(ids["fts"], branch="dev")
    api.upload_folder(repo_id=ids["fts"], folder_path=llama_finetunes[1], revision="dev")
    base_sha = api.repo_info(ids["base"]).sha
    root = tmp_path_factory.mktemp("hub_adapters")
    dev = {"revision": "dev", "base_revision": base_sha}
    adapters = {
        name: prune(ids["base"], ids[ft], root / name, method="magnitude", rate=rate, progress=False, **options)[0]
        for name, ft, rate, options in (("main", "ft", 0.9, {}), ("a0", "fts", 0.8, {}), ("a1", "fts", 0.8, dev))
    }
    return {"ids": ids, "adapters": adapters, "base": llama_pair[0]}


def _push(adapter: SparseDeltaAdapter, repo_id: str, *extra: str) -> int:
    return main(["push", str(adapter.directory), repo_id, *extra])


def test_pruning_by_hub_id_and_revision_matches_local_pruning(hub_models, llama_finetunes, tmp_path):
    base = hub_models["base"]
    local, _ = prune(base, llama_finetunes[1], tmp_path / "local", method="magnitude", rate=0.8, progress=False)
    from_hub = hub_models["adapters"]["a1"]
    assert from_hub.config.base_model_name_or_path == hub_models["ids"]["base"]
    for name in local.config.tensors:
        ours, theirs = local.sparse_tensor(name), from_hub.sparse_tensor(name)
        assert torch.equal(ours.indices, theirs.indices) and torch.equal(ours.values, theirs.values), name


def test_push_makes_one_commit_with_files_and_card(hub_models, hub_repo_id, local_hub, tmp_path, capsys):
    adapter = hub_models["adapters"]["main"]
    results = {
        "results": {"paper_gsm8k": {"alias": "gsm8k", "exact_match,strict": 0.25, "exact_match_stderr,strict": 0.01}}
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    local_hub.clear_log()

    assert _push(adapter, hub_repo_id, "--eval-results", str(tmp_path / "results.json")) == 0

    out = capsys.readouterr().out
    api = HfApi()
    sha = api.repo_info(hub_repo_id).sha
    assert f"commit {sha}" in out and f"/commit/{sha}" in out
    assert local_hub.count("create_repo", status=200) == 1 and local_hub.count("commit", status=200) == 1
    assert api.list_repo_files(hub_repo_id) == ADAPTER_REPO_FILES
    card = ModelCard.load(hub_repo_id)
    assert card.data.base_model == hub_models["ids"]["base"]
    assert card.data.library_name == "peft"
    assert set(card.data.tags) >= {"dppa-peft", "magnitude", "sparse-delta"}
    [result] = card.data.eval_results
    assert (result.dataset_name, result.metric_type, result.metric_value) == ("gsm8k", "exact_match", 0.25)
    assert "kept density (pruned tensors) | 0.0999" in card.text
    assert "dppa_peft.prune(method='magnitude', rate=0.9)" in card.text
    assert hub_repo_id in card.text  # the usage snippet names the repo
    assert HfApi().repo_info(hub_repo_id).private is False


@pytest.mark.slow
def test_pull_by_id_in_a_fresh_process_then_offline_from_the_cache(hub_models, hub_repo_id, local_hub, tmp_path):
    adapter = hub_models["adapters"]["main"]
    base_id = hub_models["ids"]["base"]
    assert _push(adapter, hub_repo_id) == 0
    local = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hub_models["base"]), str(adapter.directory))
    expected = logits(local)
    script = textwrap.dedent(f"""
        import sys, torch, dppa_peft
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        out, prompt = sys.argv[1] if len(sys.argv) > 1 else {str(tmp_path)!r}, torch.tensor({PROMPT.tolist()})
        def logits(model):
            with torch.no_grad():
                return model(prompt).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base_id!r}), {hub_repo_id!r})
        plain = AutoModelForCausalLM.from_pretrained({base_id!r})
        plain.load_adapter({hub_repo_id!r})
        merged = dppa_peft.load_merged({base_id!r}, [{hub_repo_id!r}], progress=False)
        torch.save({{"peft": logits(peft), "transformers": logits(plain), "merged": logits(merged)}}, out + "/%s.pt")
        try:
            dppa_peft.open_adapter("{HUB_USER}/never-downloaded")
        except FileNotFoundError as err:
            print(err)
    """)
    online = run_python(script % "online")
    assert "is neither a local folder nor a Hub repo" in online.stdout
    before = len(local_hub.requests)
    offline = run_python(script % "offline", env={"HF_HUB_OFFLINE": "1"})
    assert len(local_hub.requests) == before  # served from the cache: nothing reached the server
    assert "HF_HUB_OFFLINE=1 forbids downloading it" in offline.stdout
    for run in ("online", "offline"):
        for name, values in torch.load(tmp_path / f"{run}.pt").items():
            assert torch.equal(values, expected), (run, name)


def test_revisions_branch_and_older_commit(hub_models, hub_repo_id, local_hub, tmp_path, capsys):
    a0, a1 = hub_models["adapters"]["a0"], hub_models["adapters"]["a1"]
    base = hub_models["base"]
    assert _push(a0, hub_repo_id) == 0
    first = HfApi().repo_info(hub_repo_id).sha
    assert _push(a1, hub_repo_id, "--revision", "dev") == 0  # a new branch, created from main
    assert _push(a1, hub_repo_id) == 0  # main moves on
    capsys.readouterr()
    heads = local_hub.branches(hub_repo_id)
    assert set(heads) == {"main", "dev"} and first not in heads.values()

    def fingerprint(adapter: SparseDeltaAdapter) -> dict:
        return {n: adapter.sparse_tensor(n).values.sum().item() for n in adapter.config.tensors}

    assert fingerprint(open_adapter(hub_repo_id, revision="dev")) == fingerprint(a1)
    assert fingerprint(open_adapter(hub_repo_id, revision=first)) == fingerprint(a0)
    assert fingerprint(open_adapter(hub_repo_id)) == fingerprint(a1)
    old = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), hub_repo_id, revision=first)
    local = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(a0.directory))
    assert torch.equal(logits(old), logits(local))
    merge = flags(base=hub_models["ids"]["base"], adapter=hub_repo_id, adapter_revision=first, out=tmp_path / "m")
    assert main(["merge", *merge]) == 0
    expected = load_merged(base, [a0.directory], progress=False)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m")), logits(expected))


def test_private_repo_is_invisible_to_others(hub_models, hub_repo_id, tmp_path):
    adapter = hub_models["adapters"]["main"]
    assert _push(adapter, hub_repo_id, "--private") == 0
    assert HfApi().repo_info(hub_repo_id).private is True
    for token in (False, OTHER_TOKEN):  # anonymous, and another user (before the owner fills the shared cache)
        with pytest.raises(FileNotFoundError, match="for a private repo set HF_TOKEN"):
            SparseDeltaAdapter.from_pretrained(hub_repo_id, token=token)
    assert open_adapter(hub_repo_id).config.tensors == adapter.config.tensors
    public = unique_repo_id("public")
    HfApi().create_repo(public)
    with pytest.raises(ValueError, match="already exists and is public"):
        adapter.push_to_hub(public, private=True)
    assert HfApi().list_repo_files(public) == [".gitattributes"]


def test_clear_errors(hub_models, hub_repo_id, tmp_path, capsys):
    base_id = hub_models["ids"]["base"]
    adapter = hub_models["adapters"]["main"]
    missing = f"{HUB_USER}/no-such-adapter"
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hub repo"):
        open_adapter(missing)
    assert main(["merge", "--base", base_id, "--adapter", missing, "--out", str(tmp_path / "m")]) == 2
    assert "no-such-adapter' is neither a local folder nor a Hub repo" in capsys.readouterr().err
    assert run_prune(base_id, base_id, tmp_path / "p", base_revision="v9") == 2
    assert "has no revision 'v9'" in capsys.readouterr().err

    HfApi().create_repo(hub_repo_id)
    HfApi().upload_file(
        path_or_fileobj=str(adapter.directory / "adapter_config.json"),
        path_in_repo="adapter_config.json",
        repo_id=hub_repo_id,
    )
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors: the adapter is incomplete"):
        open_adapter(hub_repo_id)
    uncached = unique_repo_id(
        "uncached"
    )  # a cached copy would be served despite the bad token, as huggingface_hub does
    HfApi().create_repo(uncached)
    with pytest.raises(ValueError, match=r"refused the token .*401 Unauthorized"):
        open_adapter(uncached, token="hf_not_a_valid_token")
    with pytest.raises(ValueError, match="refused the token") as err:
        adapter.push_to_hub(unique_repo_id("x"), token="hf_not_a_valid_token")
    assert "hf_not_a_valid_token" not in str(err.value)
    with pytest.raises(ValueError, match="403 Forbidden"):
        adapter.push_to_hub("other-user/not-mine")
    with pytest.raises(ValueError, match="a revision .* applies to Hub ids only"):
        open_adapter(adapter.directory, revision="dev")


def test_wrong_base_for_a_hub_adapter(hub_models, hub_repo_id, tmp_path):
    assert _push(hub_models["adapters"]["main"], hub_repo_id) == 0
    other = make_base(tmp_path / "other", seed=123)
    with pytest.raises(BaseModelMismatchError, match="load the adapter on the base model it was pruned from"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(other), hub_repo_id)
    with pytest.raises(BaseModelMismatchError):
        load_merged(other, [hub_repo_id], progress=False)


def test_push_interrupted_mid_commit_publishes_nothing_and_retry_succeeds(hub_models, hub_repo_id, local_hub, capsys):
    adapter = hub_models["adapters"]["main"]
    before = _folder_digest(adapter.directory)
    local_hub.clear_log()
    local_hub.drop_connection("commit")  # the server reads half the commit body, then hangs up

    assert _push(adapter, hub_repo_id) == 2

    err = capsys.readouterr().err
    assert "nothing was published" in err and "re-running the same command is safe" in err
    assert local_hub.count("commit", status=DROPPED) == 1
    api = HfApi()
    head = local_hub.branches(hub_repo_id)["main"]
    assert api.list_repo_files(hub_repo_id) == [".gitattributes"] and local_hub.count("commit", status=200) == 0
    assert f"still at {head[:8]}" in err
    assert _folder_digest(adapter.directory) == before  # nothing changed locally

    assert _push(adapter, hub_repo_id) == 0
    assert local_hub.branches(hub_repo_id)["main"] != head
    assert api.list_repo_files(hub_repo_id) == ADAPTER_REPO_FILES
    assert local_hub.count("lfs_upload", "PUT", 200) == 1  # the weights uploaded by the first attempt are reused
    assert open_adapter(hub_repo_id).config.tensors == adapter.config.tensors


def test_merge_at_load_from_two_hub_repos(hub_models, tmp_path):
    a0, a1 = hub_models["adapters"]["a0"], hub_models["adapters"]["a1"]
    repos = [unique_repo_id("a0"), unique_repo_id("a1")]
    for adapter, repo in zip((a0, a1), repos):
        assert _push(adapter, repo) == 0
    base_id, base = hub_models["ids"]["base"], hub_models["base"]
    expected = logits(load_merged(base, [a0.directory, a1.directory], weights=[0.5, 1.0], progress=False))

    merged = load_merged(base_id, repos, weights=[0.5, 1.0], adapter_revisions=["main", "main"], progress=False)
    assert torch.equal(logits(merged), expected)
    assert main(["merge", *flags(base=base_id, adapter=repos, weight=[0.5, 1.0], out=tmp_path / "m")]) == 0
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m")), expected)


def test_lm_eval_model_takes_hub_ids_and_revisions(hub_models, hub_repo_id):
    from dppa_peft.evaluation.lm_model import DppaLM
    from tests.tiny_models import char_tokenizer

    a0, a1 = hub_models["adapters"]["a0"], hub_models["adapters"]["a1"]
    assert _push(a0, hub_repo_id) == 0
    first = HfApi().repo_info(hub_repo_id).sha
    assert _push(a1, hub_repo_id) == 0
    lm = DppaLM(
        pretrained=hub_models["ids"]["base"],
        adapters=hub_repo_id,
        adapter_revisions=first,
        tokenizer=char_tokenizer(),
        batch_size=1,
    )
    expected = load_merged(hub_models["base"], [a0.directory], progress=False)
    assert torch.equal(logits(lm.model), logits(expected))
