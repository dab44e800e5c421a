"""Damaged and hostile checkpoints: every one a clear error (exit 2, the file/tensor named), never a traceback."""

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from dppa_peft.io.checkpoint import Checkpoint
from dppa_peft.core.errors import UserError
from dppa_peft.io.safetensors_file import read_header
from tests.cli_args import prune_cli
from tests.faults import copy_model, edit_json, raw_safetensors
from tests.tiny_models import make_base

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A tiny base saved in several shards with an index."""
    return make_base(tmp_path_factory.mktemp("sharded") / "base", max_shard_size="100KB")


def _damaged(tmp_path, llama_pair, damage):
    """A copy of the fine-tune whose model.safetensors is rewritten by ``damage(bytes) -> bytes``."""
    ft = copy_model(llama_pair[1], tmp_path / "ft")
    path = ft / WEIGHTS
    path.write_bytes(damage(path.read_bytes()))
    return ft


def _header_len(raw):
    return struct.unpack("<Q", raw[:8])[0]


def _rewrite_header(raw, edit):
    length = _header_len(raw)
    header = json.loads(raw[8 : 8 + length])
    edit(header)
    return raw_safetensors(header, raw[8 + length :])


DAMAGES = {
    "truncated": (lambda raw: raw[: len(raw) // 2], "truncated"),
    "garbled header": (lambda raw: raw[:8] + b"\xff{garbage" + raw[18:], "not valid JSON"),
    "header length 2^62": (lambda raw: struct.pack("<Q", 2**62) + raw[8:], "header length 4611686018427387904"),
    "empty file": (lambda raw: b"", "only 0 bytes"),
    "bad offsets": (
        lambda raw: _rewrite_header(
            raw, lambda h: h[sorted(k for k in h if k != "__metadata__")[0]].update(data_offsets=[0, 10**12])
        ),
        "data offsets",
    ),
    "header is a list": (lambda raw: raw_safetensors([1, 2, 3]), "not a JSON object"),
    "wrong byte count": (
        lambda raw: _rewrite_header(raw, lambda h: h["model.norm.weight"].update(shape=[65])),
        "needs 260 bytes",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_damaged_safetensors_is_a_clear_error(kind, tmp_path, llama_pair, capsys):
    damage, message = DAMAGES[kind]
    ft = _damaged(tmp_path, llama_pair, damage)
    code, err = prune_cli(capsys, llama_pair[0], ft, tmp_path / "out")
    assert code == 2 and message in err and str(ft / WEIGHTS) in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "dtype,messages",
    [
        (torch.float8_e4m3fn, ["'model.norm.weight' is stored as F8_E4M3 (float8)"]),
        (torch.int32, ["'model.norm.weight' is int32 in the fine-tune", "float32 in the base"]),
    ],
)
def test_a_tensor_of_an_unusable_dtype_is_refused_by_name(dtype, messages, tmp_path, llama_pair, capsys):
    norm = "model.norm.weight"
    ft = copy_model(llama_pair[1], tmp_path / "ft", lambda t: t.update({norm: t[norm].to(dtype)}))
    code, err = prune_cli(capsys, llama_pair[0], ft, tmp_path / "out")
    assert code == 2 and all(m in err for m in messages), err


def test_overlapping_tensors_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(
        raw_safetensors(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
        )
    )
    with pytest.raises(UserError, match="overlap"):
        read_header(path)


def _index(folder):
    return folder / "model.safetensors.index.json"


@pytest.mark.parametrize(
    "shard,message",
    [
        ("../other/model.safetensors", "outside the checkpoint folder"),
        ("/etc/passwd", "outside the checkpoint folder"),
    ],
)
def test_shard_index_paths_stay_inside_the_folder(shard, message, tmp_path, sharded):
    folder = shutil.copytree(sharded, tmp_path / "base")
    (tmp_path / "other").mkdir()
    shutil.copy(next(folder.glob("model-*.safetensors")), tmp_path / "other" / WEIGHTS)
    edit_json(_index(folder), lambda d: d["weight_map"].update({next(iter(d["weight_map"])): shard}))
    with pytest.raises(UserError, match=message):
        Checkpoint(folder)


def test_index_mapping_a_tensor_to_the_wrong_shard(tmp_path, sharded):
    folder = shutil.copytree(sharded, tmp_path / "base")

    def swap(data):
        shards = sorted(set(data["weight_map"].values()))
        first = next(n for n, s in sorted(data["weight_map"].items()) if s == shards[0])
        data["weight_map"][first] = shards[1]

    edit_json(_index(folder), swap)
    with pytest.raises(UserError, match="to shards that do not hold them"):
        Checkpoint(folder)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.pop("weight_map"), "no 'weight_map'"),
        (lambda d: d.update(weight_map=["a"]), "no 'weight_map'"),
    ],
)
def test_index_without_weight_map(edit, message, tmp_path, sharded):
    folder = shutil.copytree(sharded, tmp_path / "base")
    edit_json(_index(folder), edit)
    with pytest.raises(UserError, match=message):
        Checkpoint(folder)


@pytest.mark.parametrize(
    "name,kind", [("model.safetensors.index.json", "checkpoint index"), ("config.json", "model config")]
)
def test_bad_json_names_the_file(name, kind, tmp_path, sharded, capsys):
    folder = shutil.copytree(sharded, tmp_path / "base")
    (folder / name).write_text('{"weight_map": {')
    code, err = prune_cli(capsys, folder, sharded, tmp_path / "out")
    assert code == 2 and f"{kind} {folder / name} is not valid JSON (line 1" in err


def test_sharded_checkpoint_still_reads(sharded):
    checkpoint = Checkpoint(sharded)
    assert len({checkpoint._shard_of[n] for n in checkpoint.names()}) > 1
    assert checkpoint.read("model.norm.weight").shape == (64,)


def test_pickle_only_checkpoint_is_refused(tmp_path, llama_pair, capsys):
    folder = tmp_path / "ft"
    folder.mkdir()
    shutil.copy(llama_pair[1] / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    code, err = prune_cli(capsys, llama_pair[0], folder, tmp_path / "out")
    assert code == 2 and "only pickled weights" in err


def test_mistyped_local_path_says_no_such_folder(tmp_path, llama_pair, capsys, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    code, err = prune_cli(capsys, llama_pair[0], "models/nosuch", tmp_path / "out")
    assert code == 2 and "no such folder: 'models/nosuch'" in err and "Hub" not in err.split(";")[0]


def test_a_file_instead_of_a_folder(tmp_path, llama_pair, capsys):
    code, err = prune_cli(capsys, llama_pair[0], llama_pair[1] / WEIGHTS, tmp_path / "out")
    assert code == 2 and "is a file, not a folder" in err


def test_a_model_without_weights(tmp_path, llama_pair, capsys):
    (tmp_path / "empty").mkdir()
    code, err = prune_cli(capsys, llama_pair[0], tmp_path / "empty", tmp_path / "out")
    assert code == 2 and "no model.safetensors" in err


def test_empty_safetensors_file_written_by_safetensors(tmp_path):
    save_file({}, tmp_path / WEIGHTS)
    assert Checkpoint(tmp_path).names() == []


def test_sharded_checkpoint_with_linked_shards_reads(tmp_path, sharded):
    """The Hugging Face cache layout: every shard a symlink to a blob outside the snapshot folder."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for path in sharded.iterdir():
        shutil.copy(path, blobs / path.name)
        (snapshot / path.name).symlink_to(blobs / path.name)
    checkpoint = Checkpoint(snapshot)
    assert torch.equal(checkpoint.read("model.norm.weight"), Checkpoint(sharded).read("model.norm.weight"))
