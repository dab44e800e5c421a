"""Smoke test of the local Hub server with the real huggingface_hub client: push (regular and LFS files, a branch)
and pull by branch and by commit sha. The behaviour of our own Hub code is tested in ``test_hub.py``."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from tests.hub_server import LocalHub


def _folder(path: Path, seed: int) -> Path:
    path.mkdir()
    (path / "model.safetensors").write_bytes(bytes(range(seed, seed + 64)))  # any bytes: stored via LFS
    (path / "config.json").write_text(json.dumps({"seed": seed}))
    return path


def test_push_and_pull_by_branch_and_commit(local_hub: LocalHub, hub_repo_id: str, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo(hub_repo_id)
    local_hub.clear_log()
    first = api.upload_folder(repo_id=hub_repo_id, folder_path=_folder(tmp_path / "v1", 1))
    api.create_branch(hub_repo_id, branch="dev")
    second = api.upload_folder(repo_id=hub_repo_id, folder_path=_folder(tmp_path / "v2", 2), revision="dev")

    assert local_hub.count("lfs_upload", "PUT", 200) == 2 and local_hub.count("commit", status=200) == 2
    assert {b.name: b.target_commit for b in api.list_repo_refs(hub_repo_id).branches} == {
        "main": first.oid,
        "dev": second.oid,
    }
    assert api.list_repo_files(hub_repo_id) == [".gitattributes", "config.json", "model.safetensors"]
    for revision, seed in ((None, 1), ("dev", 2), (first.oid, 1), (second.oid, 2)):
        weights = hf_hub_download(hub_repo_id, "model.safetensors", revision=revision)
        assert Path(weights).read_bytes() == bytes(range(seed, seed + 64))
    snapshot = Path(snapshot_download(hub_repo_id, revision="dev"))
    assert snapshot.name == second.oid and json.loads((snapshot / "config.json").read_text()) == {"seed": 2}
    assert [c.title for c in api.list_repo_commits(hub_repo_id)][-1] == "initial commit"
    assert local_hub.server_errors == []
