"""The local Hub server driven by the real huggingface_hub client (and transformers), never the internet."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import httpx2
import numpy as np
import pytest
from huggingface_hub import (
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session
from safetensors.numpy import save_file

from tests.hub_fixtures import HUB_USER, OTHER_TOKEN, OTHER_USER, hub_environment, run_python
from tests.hub_server import CLIENT_GONE, DROPPED, LocalHub

SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def _write_model_folder(folder: Path, seed: int = 0) -> Path:
    """A folder with a small safetensors file (LFS), a README.md and a config.json (regular files)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({"weight": rng.standard_normal((16, 8)).astype(np.float32)}, str(folder / "model.safetensors"))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny\n")
    (folder / "config.json").write_text(json.dumps({"seed": seed}))
    return folder


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def api(local_hub: LocalHub) -> HfApi:
    """An HfApi client using HF_ENDPOINT and the dummy token from the environment."""
    return HfApi()


def test_whoami_and_create_repo(api: HfApi, hub_repo_id: str, local_hub: LocalHub) -> None:
    assert api.whoami()["name"] == HUB_USER
    url = api.create_repo(hub_repo_id)
    assert url == f"{hub_environment().endpoint}/{hub_repo_id}"
    assert url.repo_id == hub_repo_id

    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(hub_repo_id)
    assert conflict.value.response.status_code == 409
    assert api.create_repo(hub_repo_id, exist_ok=True) == url

    info = api.repo_info(hub_repo_id)
    assert SHA_RE.match(info.sha)
    assert info.private is False
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert [c.title for c in api.list_repo_commits(hub_repo_id)] == ["initial commit"]

    with pytest.raises(HfHubHTTPError) as forbidden:
        api.create_repo(f"{OTHER_USER}/not-mine")
    assert forbidden.value.response.status_code == 403
    assert local_hub.count("create_repo", status=409) == 2
    assert local_hub.server_errors == []


def test_upload_folder_uses_lfs_for_safetensors(
    api: HfApi, hub_repo_id: str, local_hub: LocalHub, tmp_path: Path
) -> None:
    folder = _write_model_folder(tmp_path / "model")
    api.create_repo(hub_repo_id)
    local_hub.clear_log()

    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=folder, commit_message="Add tiny model")

    assert SHA_RE.match(commit.oid)
    assert api.repo_info(hub_repo_id).sha == commit.oid == local_hub.branch_head(hub_repo_id)
    assert local_hub.count("lfs_batch") == 1
    assert local_hub.count("lfs_upload", "PUT", 200) == 1  # only the safetensors file goes through LFS
    assert local_hub.count("commit", status=200) == 1
    assert local_hub.count("validate_yaml") >= 1  # README.md is validated before the push
    assert api.list_repo_files(hub_repo_id) == [".gitattributes", "README.md", "config.json", "model.safetensors"]

    tree = {entry.path: entry for entry in api.list_repo_tree(hub_repo_id, recursive=True)}
    weights = tree["model.safetensors"]
    assert weights.lfs is not None and weights.lfs.sha256 == _sha256(folder / "model.safetensors")
    assert weights.size == (folder / "model.safetensors").stat().st_size
    assert tree["README.md"].lfs is None
    readme = (folder / "README.md").read_bytes()
    assert tree["README.md"].blob_id == hashlib.sha1(b"blob %d\0" % len(readme) + readme).hexdigest()

    for name in ("model.safetensors", "README.md", "config.json"):
        path = hf_hub_download(hub_repo_id, name)
        assert Path(path).read_bytes() == (folder / name).read_bytes()
        assert f"snapshots/{commit.oid}/" in Path(path).as_posix()
    assert [c.title for c in api.list_repo_commits(hub_repo_id)] == ["Add tiny model", "initial commit"]


def test_resolve_headers_and_range(api: HfApi, hub_repo_id: str, tmp_path: Path) -> None:
    folder = _write_model_folder(tmp_path / "model")
    api.create_repo(hub_repo_id)
    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=folder)
    content = (folder / "model.safetensors").read_bytes()
    url = hf_hub_url(hub_repo_id, "model.safetensors")

    metadata = get_hf_file_metadata(url)
    assert metadata.commit_hash == commit.oid
    assert metadata.etag == hashlib.sha256(content).hexdigest()  # X-Linked-Etag of an LFS file
    assert metadata.size == len(content)

    response = get_session().get(url, headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.content == content[10:20]
    assert response.headers["Content-Range"] == f"bytes 10-19/{len(content)}"
    assert get_session().get(url, headers={"Range": f"bytes={len(content)}-"}).status_code == 416


def test_branches_and_commit_revisions(api: HfApi, hub_repo_id: str, tmp_path: Path) -> None:
    v1 = _write_model_folder(tmp_path / "v1", seed=1)
    v2 = _write_model_folder(tmp_path / "v2", seed=2)
    api.create_repo(hub_repo_id)
    first = api.upload_folder(repo_id=hub_repo_id, folder_path=v1)
    api.create_branch(hub_repo_id, branch="dev")
    second = api.upload_folder(repo_id=hub_repo_id, folder_path=v2, revision="dev")

    assert first.oid != second.oid
    refs = {branch.name: branch.target_commit for branch in api.list_repo_refs(hub_repo_id).branches}
    assert refs == {"main": first.oid, "dev": second.oid}

    for revision, expected in ((None, v1), ("dev", v2), (first.oid, v1), (second.oid, v2)):
        path = hf_hub_download(hub_repo_id, "model.safetensors", revision=revision)
        assert _sha256(path) == _sha256(expected / "model.safetensors")

    for revision, oid, expected in (("dev", second.oid, v2), (first.oid, first.oid, v1)):
        snapshot = Path(snapshot_download(hub_repo_id, revision=revision))
        assert snapshot.name == oid
        assert sorted(p.name for p in snapshot.iterdir()) == [".gitattributes", *sorted(os.listdir(expected))]
        assert (snapshot / "config.json").read_text() == (expected / "config.json").read_text()
    assert api.repo_info(hub_repo_id, revision="dev").sha == second.oid


def test_delete_file_and_folder(api: HfApi, hub_repo_id: str, tmp_path: Path) -> None:
    folder = _write_model_folder(tmp_path / "model")
    _write_model_folder(folder / "sub" / "deeper", seed=3)
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=folder)
    assert "sub/deeper/model.safetensors" in api.list_repo_files(hub_repo_id)
    top_level = {entry.path for entry in api.list_repo_tree(hub_repo_id)}
    assert top_level == {".gitattributes", "README.md", "config.json", "model.safetensors", "sub"}

    api.delete_folder("sub", hub_repo_id)
    api.delete_file("config.json", hub_repo_id)

    assert api.list_repo_files(hub_repo_id) == [".gitattributes", "README.md", "model.safetensors"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("config.json", hub_repo_id)


def test_dataset_repo_round_trip(api: HfApi, hub_repo_id: str, tmp_path: Path) -> None:
    rows = b'{"text": "a"}\n{"text": "b"}\n'
    api.create_repo(hub_repo_id, repo_type="dataset")
    for name, content in (("train.jsonl", rows), ("train.parquet", b"PAR1")):
        api.upload_file(path_or_fileobj=content, path_in_repo=f"data/{name}", repo_id=hub_repo_id, repo_type="dataset")

    files = {entry.path: entry for entry in api.list_repo_tree(hub_repo_id, repo_type="dataset", recursive=True)}
    assert files["data/train.parquet"].lfs is not None and files["data/train.jsonl"].lfs is None
    path = hf_hub_download(hub_repo_id, "data/train.jsonl", repo_type="dataset")
    assert Path(path).read_bytes() == rows
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(hub_repo_id)  # same id, but no model repo


def test_private_repo_needs_owner_token(api: HfApi, hub_repo_id: str, tmp_path: Path, local_hub: LocalHub) -> None:
    folder = _write_model_folder(tmp_path / "model")
    api.create_repo(hub_repo_id, private=True)
    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=folder)

    assert api.repo_info(hub_repo_id).private is True
    for token in (False, OTHER_TOKEN):  # anonymous (401) and another user (404): both look like a missing repo
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).repo_info(hub_repo_id)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(hub_repo_id, "config.json", token=token, cache_dir=tmp_path / f"cache-{token}")
    assert local_hub.count("resolve", "HEAD", 401) == 1
    assert local_hub.count("resolve", "HEAD", 404) == 1

    path = hf_hub_download(hub_repo_id, "config.json", cache_dir=tmp_path / "owner-cache")
    assert Path(path).read_bytes() == (folder / "config.json").read_bytes()
    assert f"snapshots/{commit.oid}/" in Path(path).as_posix()


def test_push_to_someone_elses_repo_is_forbidden(api: HfApi, hub_repo_id: str, local_hub: LocalHub) -> None:
    api.create_repo(hub_repo_id)
    head = local_hub.branch_head(hub_repo_id)
    with pytest.raises(HfHubHTTPError) as forbidden:
        HfApi(token=OTHER_TOKEN).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo_id)
    assert forbidden.value.response.status_code == 403
    assert local_hub.branch_head(hub_repo_id) == head


def test_invalid_token_is_an_auth_error(api: HfApi, hub_repo_id: str, tmp_path: Path) -> None:
    api.create_repo(hub_repo_id)
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as whoami_error:
        api.whoami(token="hf_not_a_valid_token")
    assert whoami_error.value.response.status_code == 401

    with pytest.raises(HfHubHTTPError) as download_error:
        hf_hub_download(hub_repo_id, ".gitattributes", token="hf_not_a_valid_token", cache_dir=tmp_path)
    assert download_error.value.response.status_code == 401
    assert not isinstance(download_error.value, RepositoryNotFoundError)
    assert download_error.value.server_message == "Invalid credentials in Authorization header"


def test_missing_repo_file_and_revision(api: HfApi, hub_repo_id: str, local_hub: LocalHub) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{HUB_USER}/does-not-exist", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(f"{HUB_USER}/does-not-exist")

    api.create_repo(hub_repo_id)
    head = local_hub.branch_head(hub_repo_id)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repo_id, "missing.json")
    # X-Repo-Commit on the 404 lets the client remember the missing file for this commit
    cache = Path(hub_environment().hf_home) / "hub" / f"models--{hub_repo_id.replace('/', '--')}"
    assert (cache / ".no_exist" / str(head) / "missing.json").is_file()

    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(hub_repo_id, revision="0" * 40)


def test_offline_mode_serves_the_cache_in_a_fresh_process(
    api: HfApi, hub_repo_id: str, local_hub: LocalHub, tmp_path: Path
) -> None:
    folder = _write_model_folder(tmp_path / "model")
    api.create_repo(hub_repo_id)
    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=folder)
    code = f"""
import hashlib, json, os
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
try:
    path = hf_hub_download({hub_repo_id!r}, "model.safetensors")
    snapshot = snapshot_download({hub_repo_id!r})
    result = {{"sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(), "files": sorted(os.listdir(snapshot))}}
except LocalEntryNotFoundError as e:
    result = {{"error": type(e).__name__}}
print(json.dumps(result))
"""
    files = sorted([".gitattributes", *os.listdir(folder)])
    expected = {"sha256": _sha256(folder / "model.safetensors"), "files": files}

    online = run_python(code)  # pull by id in a fresh process: fills this session's HF_HOME
    assert json.loads(online.stdout) == expected
    assert local_hub.count("resolve", "GET", 200) >= 1

    before = len(local_hub.requests)
    offline = run_python(code, env={"HF_HUB_OFFLINE": "1"})
    assert json.loads(offline.stdout) == expected
    assert len(local_hub.requests) == before  # nothing reached the server

    empty_home = run_python(code, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-home")})
    assert json.loads(empty_home.stdout) == {"error": "LocalEntryNotFoundError"}
    assert len(local_hub.requests) == before
    assert local_hub.branch_head(hub_repo_id) == commit.oid


def test_commit_dropped_mid_upload_publishes_nothing_and_retry_succeeds(
    api: HfApi, hub_repo_id: str, local_hub: LocalHub, tmp_path: Path
) -> None:
    api.create_repo(hub_repo_id)
    head = local_hub.branch_head(hub_repo_id)
    folder = _write_model_folder(tmp_path / "model")
    local_hub.clear_log()
    local_hub.drop_connection("commit")  # the server reads half the commit body, then closes the socket

    with pytest.raises(httpx2.TransportError):
        api.upload_folder(repo_id=hub_repo_id, folder_path=folder)

    assert local_hub.count("commit", status=DROPPED) == 1
    assert local_hub.pending_drops("commit") == 0
    assert local_hub.branch_head(hub_repo_id) == head
    assert api.repo_info(hub_repo_id).sha == head
    assert api.list_repo_files(hub_repo_id) == [".gitattributes"]
    assert len(api.list_repo_commits(hub_repo_id)) == 1
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repo_id, "config.json")
    assert local_hub.partial_uploads() == []

    retry = api.upload_folder(repo_id=hub_repo_id, folder_path=folder)

    assert local_hub.branch_head(hub_repo_id) == retry.oid != head
    assert local_hub.count("lfs_upload", "PUT") == 1  # the LFS object stored by the first attempt is reused
    assert len(api.list_repo_commits(hub_repo_id)) == 2
    path = hf_hub_download(hub_repo_id, "model.safetensors")
    assert _sha256(path) == _sha256(folder / "model.safetensors")


def test_lfs_upload_dropped_mid_body_is_retried_by_the_client(
    api: HfApi, hub_repo_id: str, local_hub: LocalHub, tmp_path: Path
) -> None:
    api.create_repo(hub_repo_id)
    folder = _write_model_folder(tmp_path / "model")
    size = (folder / "model.safetensors").stat().st_size
    local_hub.clear_log()
    local_hub.drop_connection("lfs_upload", after_bytes=size // 3)

    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=folder)

    assert local_hub.count("lfs_upload", "PUT", DROPPED) == 1
    assert local_hub.count("lfs_upload", "PUT", 200) == 1
    assert local_hub.count("lfs_upload", "PUT", CLIENT_GONE) == 0
    assert local_hub.partial_uploads() == []
    assert _sha256(folder / "model.safetensors") in local_hub.stored_objects()
    path = hf_hub_download(hub_repo_id, "model.safetensors", revision=commit.oid)
    assert _sha256(path) == _sha256(folder / "model.safetensors")


def test_transformers_autoconfig_resolves_a_hub_id_through_the_server(
    api: HfApi, hub_repo_id: str, local_hub: LocalHub
) -> None:
    from transformers import AutoConfig

    config = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
              "num_hidden_layers": 1, "num_key_value_heads": 2, "vocab_size": 64}  # fmt: skip
    api.create_repo(hub_repo_id)
    payload = json.dumps(config).encode()
    commit = api.upload_file(path_or_fileobj=payload, path_in_repo="config.json", repo_id=hub_repo_id)
    local_hub.clear_log()

    loaded = AutoConfig.from_pretrained(hub_repo_id)

    assert type(loaded).__name__ == "LlamaConfig"
    assert (loaded.hidden_size, loaded.num_hidden_layers, loaded.vocab_size) == (16, 1, 64)
    assert local_hub.count("resolve", "GET", 200) == 1
    assert AutoConfig.from_pretrained(hub_repo_id, revision=commit.oid).hidden_size == 16


def test_standalone_hub_stops_serving(tmp_path: Path) -> None:
    with LocalHub(tmp_path / "hub", {"hf_solo": "solo"}) as hub:
        solo = HfApi(endpoint=hub.url, token="hf_solo")
        assert solo.create_repo("solo/repo").repo_id == "solo/repo"
        assert solo.list_repo_files("solo/repo") == [".gitattributes"]
    with pytest.raises(httpx2.ConnectError):  # kept-alive connections are cut too (repo_info does not retry)
        solo.repo_info("solo/repo")
    assert hub.count("tree", "GET", 200) == 1
    assert hub.server_errors == []
