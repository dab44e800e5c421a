import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dppa_peft.io.checkpoint import Checkpoint, SafetensorsWriter, ShardedWriter, atomic_directory
from dppa_peft.core.errors import UserError
from tests.tiny_models import make_base


def test_writer_roundtrip_all_dtypes(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(10, dtype=torch.uint8),
        "d": torch.tensor([], dtype=torch.float16),
    }
    writer = SafetensorsWriter(tmp_path / "x.safetensors")
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    writer.close()
    loaded = load_file(tmp_path / "x.safetensors")
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp files left


def test_sharded_writer_and_reader(tmp_path):
    writer = ShardedWriter(tmp_path, max_shard_bytes=100)
    tensors = {f"t{i}": torch.full((10,), float(i)) for i in range(5)}  # 40 bytes each -> 2 per shard
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    files = writer.close()
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["t4"] == "model-00003-of-00003.safetensors"
    checkpoint = Checkpoint(tmp_path)
    assert checkpoint.names() == sorted(tensors)
    assert torch.equal(checkpoint.read("t3"), tensors["t3"])
    assert checkpoint.shape("t1") == (10,) and checkpoint.dtype("t1") == torch.float32


def test_sharded_transformers_checkpoint_reads_like_single(tmp_path):
    single = Checkpoint(make_base(tmp_path / "single"))
    sharded = Checkpoint(make_base(tmp_path / "sharded", max_shard_size="100KB"))
    assert len(set(sharded._shard_of.values())) > 1
    assert single.names() == sharded.names()
    for name in single.names():
        assert torch.equal(single.read(name), sharded.read(name))


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickled weights"):
        Checkpoint(tmp_path)


def test_missing_shard_is_named(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        Checkpoint(tmp_path)


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        Checkpoint.open(str(tmp_path / "nope" / "model"))


def test_atomic_directory_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_to_clobber_without_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="overwrite"):
        with atomic_directory(target):
            pass
    assert (target / "keep.txt").read_text() == "user data"
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_reads_are_independent_copies(tmp_path):
    """In-place work on a read tensor never shows up in a later read (safetensors maps files copy-on-write)."""
    save_file({"w": torch.ones(4)}, tmp_path / "model.safetensors")
    checkpoint = Checkpoint(tmp_path)
    first = checkpoint.read("w")
    first -= 5.0
    assert checkpoint.read("w").tolist() == [1.0] * 4
    assert load_file(tmp_path / "model.safetensors")["w"].tolist() == [1.0] * 4
