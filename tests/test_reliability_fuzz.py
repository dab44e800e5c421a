"""Fuzzing the readers of untrusted files: whatever the bytes, the result is a correct read or a ``UserError``.

Three targets: the safetensors reader (header check + safe_open + every tensor), the adapter config parser
(``adapter_config.json``) and the adapter loader (weights decoded and checked). Examples are bounded so the file
runs in seconds; a failing example is printed by hypothesis and belongs in the table of docs/reliability.md.
"""

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dppa_peft import SparseDeltaAdapter, prune
from dppa_peft.io.checkpoint import Checkpoint
from dppa_peft.core.errors import UserError
from dppa_peft.format.io import state_key

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 50)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
Q = "model.layers.0.self_attn.q_proj.weight"
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _valid_safetensors() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        save_file(
            {
                "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                "b": torch.ones(4, dtype=torch.bfloat16),
                "c": torch.zeros(3, dtype=torch.int64),
            },
            f"{tmp}/x.safetensors",
        )
        return Path(f"{tmp}/x.safetensors").read_bytes()


VALID = _valid_safetensors()
HEADER_END = 8 + struct.unpack("<Q", VALID[:8])[0]


def _read_everything(folder: Path) -> None:
    checkpoint = Checkpoint(folder)
    for name in checkpoint.names():
        checkpoint.read(name)


def _mutations():
    """Flip, overwrite, cut or extend the bytes of a valid file (header bytes most of the time)."""
    position = st.integers(0, len(VALID) - 1)
    header_position = st.integers(0, HEADER_END - 1)
    return st.one_of(
        st.tuples(st.just("set"), st.one_of(header_position, position), st.integers(0, 255)),
        st.tuples(st.just("cut"), position, st.just(0)),
        st.tuples(st.just("grow"), st.integers(1, 64), st.integers(0, 255)),
        st.tuples(st.just("length"), st.integers(0, 2**64 - 1), st.just(0)),
    )


def _apply(raw: bytes, mutations) -> bytes:
    data = bytearray(raw)
    for kind, where, value in mutations:
        if kind == "set" and where < len(data):
            data[where] = value
        elif kind == "cut":
            del data[where:]
        elif kind == "grow":
            data += bytes([value]) * where
        elif kind == "length" and len(data) >= 8:
            data[:8] = struct.pack("<Q", where)
    return bytes(data)


@FUZZ
@given(mutations=st.lists(_mutations(), min_size=1, max_size=4))
def test_safetensors_reader_on_mutated_files(tmp_path, mutations):
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(_apply(VALID, mutations))
    try:
        _read_everything(folder)
    except UserError:
        pass


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=10), JSON, max_size=4), data=st.binary(max_size=64))
def test_safetensors_reader_on_arbitrary_headers(tmp_path, header, data):
    folder = tmp_path / "h"
    folder.mkdir(exist_ok=True)
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    try:
        _read_everything(folder)
    except UserError:
        pass


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, llama_pair):
    out = tmp_path_factory.mktemp("fuzz") / "a"
    prune(*llama_pair, out, method="magnitude", rate=0.9, progress=False, partition_rates=[0.95, 0.9])
    return out


def _fresh_copy(adapter: Path, folder: Path) -> Path:
    """A pristine copy of the adapter (hypothesis reruns a test body in the same tmp_path)."""
    shutil.rmtree(folder, ignore_errors=True)
    return Path(shutil.copytree(adapter, folder))


def _load_and_decode(folder: Path) -> None:
    handle = SparseDeltaAdapter(folder)
    handle.verify()
    for name in handle.config.tensors:
        handle.sparse_tensor(name)


FIELDS = [
    "peft_type",
    "tensors",
    "amplification",
    "vocab_size",
    "base_fingerprint",
    "format_version",
    "method",
    "target_modules",
    "task_type",
    "inference_mode",
    "summary",
]
RECORD_FIELDS = ["shape", "nnz", "encoding", "partition", "index_bytes", "factors", "pruned"]


@FUZZ
@given(
    field=st.sampled_from(FIELDS),
    value=JSON,
    record_field=st.sampled_from(RECORD_FIELDS),
    record_value=JSON,
    drop=st.booleans(),
)
def test_adapter_config_parser_on_edited_configs(tmp_path, adapter, field, value, record_field, record_value, drop):
    folder = _fresh_copy(adapter, tmp_path / "c")
    config = json.loads((folder / CONFIG).read_text())
    if drop:
        config.pop(field, None)
    else:
        config[field] = value
    if isinstance(config.get("tensors"), dict) and Q in config["tensors"]:
        config["tensors"][Q][record_field] = record_value
    (folder / CONFIG).write_text(json.dumps(config))
    try:
        _load_and_decode(folder)
    except UserError:
        pass


@FUZZ
@given(config=JSON)
def test_adapter_config_parser_on_arbitrary_json(tmp_path, adapter, config):
    folder = _fresh_copy(adapter, tmp_path / "j")
    (folder / CONFIG).write_text(json.dumps(config))
    with pytest.raises(UserError):
        _load_and_decode(folder)


PARTS = ["values", "index", "partition"]
STORED = st.one_of(
    st.binary(max_size=600).map(
        lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8) if b else torch.zeros(0, dtype=torch.uint8)
    ),
    st.lists(st.floats(width=32), max_size=600).map(lambda v: torch.tensor(v, dtype=torch.float32)),
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=50).map(lambda v: torch.tensor(v, dtype=torch.int32)),
)


@FUZZ
@given(part=st.sampled_from(PARTS), tensor=STORED, also_nnz=st.booleans())
def test_adapter_loader_on_replaced_tensors(tmp_path, adapter, part, tensor, also_nnz):
    folder = _fresh_copy(adapter, tmp_path / "t")
    stored = load_file(folder / WEIGHTS)
    stored[state_key(Q, part)] = tensor.reshape(-1)
    save_file(stored, folder / WEIGHTS)
    if also_nnz:  # keep the config consistent with the new length, so the content checks are reached
        config = json.loads((folder / CONFIG).read_text())
        config["tensors"][Q]["nnz" if part != "index" else "index_bytes"] = tensor.numel()
        (folder / CONFIG).write_text(json.dumps(config))
    try:
        _load_and_decode(folder)
    except UserError:
        pass
