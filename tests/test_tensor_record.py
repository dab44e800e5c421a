"""The typed tensor record (format.record.TensorRecord): it reads and writes exactly the JSON of a real adapter
(format version 2, with DPA partitions and row factor tables), version-1 adapters still load, and a malformed
record is a UserError naming the tensor and the key."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dppa_peft import SparseDeltaAdapter, prune
from dppa_peft.amplify.api import write_amplified
from dppa_peft.format.amplification import amplification_record
from dppa_peft.format.partitions import adapter_partitions
from dppa_peft.core.errors import UserError
from dppa_peft.format.config import SparseDeltaConfig
from dppa_peft.format.record import TensorRecord

CONFIG = "adapter_config.json"
Q = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.norm.weight"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, llama_pair) -> tuple[SparseDeltaAdapter, SparseDeltaAdapter]:
    """A DP adapter with two DPA partitions, and the same adapter amplified with [2, R] row factor tables (v2)."""
    root = tmp_path_factory.mktemp("records")
    base, ft = llama_pair
    pruned, _ = prune(base, ft, root / "dp", method="dp", rate=0.8, partition_rates=[0.9, 0.8], progress=False)
    rows = {name: torch.full((2, r.shape[0]), 1.5) for name, r in pruned.config.tensors.items() if r.pruned}
    (root / "amplified").mkdir()
    write_amplified(
        pruned,
        root / "amplified",
        adapter_partitions(pruned, [0.9, 0.8]),
        amplification_record([0.9, 0.8], [1.2, 0.7]),
        {},
        rows,
    )
    return pruned, SparseDeltaAdapter(root / "amplified")


def _raw(adapter: SparseDeltaAdapter) -> dict:
    return json.loads((adapter.directory / CONFIG).read_text())


def test_records_of_real_adapters_round_trip_to_the_same_json(adapters, tmp_path) -> None:
    pruned, amplified = adapters
    for adapter in (pruned, amplified):
        raw = _raw(adapter)
        assert raw["format_version"] == 2
        for name, data in raw["tensors"].items():
            record = TensorRecord.from_dict(name, data)
            assert record.to_dict() == data and record == adapter.config.tensors[name]
        assert adapter.config.to_dict()["tensors"] == raw["tensors"]
        adapter.config.save_pretrained(str(tmp_path / "again"))  # the whole file: byte for byte
        assert (tmp_path / "again" / CONFIG).read_text() == (adapter.directory / CONFIG).read_text()
    q = amplified.config.tensors[Q]
    assert q.pruned and q.partition and q.factors == (2, q.shape[0]) and q.block == 0 and q.module == "self_attn.q_proj"
    assert q.dtype == "float32" and q.encoding in ("gaps", "bitmask") and q.density == q.nnz / q.numel
    assert q.partition_densities == pytest.approx((0.1, 0.2)) and q.planned_density is not None
    assert q.stored_bytes == q.nnz * 4 + q.index_bytes + q.nnz + 4 * 2 * q.shape[0]  # values, index, ids, table
    norm = pruned.config.tensors[NORM]
    assert not norm.pruned and norm.encoding == "dense" and norm.factors is None and norm.planned_density is None
    assert "factors" not in norm.to_dict() and "planned_density" not in norm.to_dict()


def test_unknown_keys_are_kept_and_null_reads_as_absent() -> None:
    data = {"shape": [2, 3], "nnz": 6, "encoding": "dense", "pruned": False, "note": {"by": "hand"}, "factors": None}
    record = TensorRecord.from_dict("w", data)
    assert record.extra == {"note": {"by": "hand"}} and record.factors is None
    assert record.to_dict() == {"shape": [2, 3], "nnz": 6, "encoding": "dense", "pruned": False, "note": {"by": "hand"}}
    config = SparseDeltaConfig(tensors={"w": data})  # configs read JSON objects into records
    assert config.tensors["w"] == record and config.to_dict()["tensors"]["w"]["note"] == {"by": "hand"}


def test_a_version_1_adapter_loads(adapters, tmp_path, llama_pair) -> None:
    """Version 1: no format_version, no factor tables; the oldest records have no dtype either."""
    pruned, _ = adapters
    folder = tmp_path / "v1"
    shutil.copytree(pruned.directory, folder)
    raw = _raw(pruned)
    del raw["format_version"]
    for data in raw["tensors"].values():
        del data["dtype"]
    (folder / CONFIG).write_text(json.dumps(raw))
    old = SparseDeltaAdapter(folder)
    assert old.config.format_version is None and old.config.tensors[Q].dtype is None
    assert old.config.to_dict()["tensors"] == raw["tensors"]
    for name in raw["tensors"]:
        assert torch.equal(old.sparse_tensor(name).values, pruned.sparse_tensor(name).values), name
    base = AutoModelForCausalLM.from_pretrained(llama_pair[0])
    model = PeftModel.from_pretrained(base, str(folder))
    store = model.base_model.model.model.layers[0].self_attn.q_proj.store("default")
    assert torch.equal(store.encoded("weight").partition, pruned.encoded(Q).partition)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("nnz", "many", "has nnz 'many', not a count between 0 and"),
        ("shape", [4, -1], "has an invalid shape [4, -1]"),
        ("encoding", "zip", "has an unknown encoding 'zip'"),
        ("pruned", "yes", "has pruned 'yes', not true or false"),
        ("index_bytes", 1.5, "has index_bytes 1.5, not a byte count"),
        ("partition_densities", ["a"], "has partition_densities ['a'], not a list of numbers"),
        ("factors", [2], "has an invalid factors table shape [2] (expected [P, R])"),
    ],
)
def test_a_malformed_record_names_the_tensor_and_the_key(adapters, tmp_path, key, value, message) -> None:
    pruned, _ = adapters
    folder = tmp_path / "bad"
    shutil.copytree(pruned.directory, folder)
    raw = _raw(pruned)
    raw["tensors"][Q][key] = value
    (folder / CONFIG).write_text(json.dumps(raw))
    with pytest.raises(UserError) as caught:
        SparseDeltaAdapter(folder)
    assert f"adapter {folder} tensor {Q!r} {message}" in str(caught.value)
    with pytest.raises(UserError, match="tensor 'w': its record is not an object"):
        TensorRecord.from_dict("w", [1, 2])
    with pytest.raises(UserError, match="has an invalid shape None"):
        TensorRecord.from_dict("w", {"nnz": 1, "encoding": "dense"})  # a required key missing


def test_a_missing_optional_field_that_a_step_needs_is_named() -> None:
    record = TensorRecord.from_dict("w", {"shape": [4], "nnz": 2, "encoding": "gaps", "pruned": True})
    with pytest.raises(UserError, match="tensor 'w' records no 'unclipped_density', which re-deriving"):
        record.require("w", "unclipped_density", "re-deriving its partitions needs")
