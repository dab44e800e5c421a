"""Damaged, edited and mismatched adapters: a clear error on load, on merge and before push; never a wrong merge."""

import json
import math
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from dppa_peft import SparseDeltaAdapter, prune
from dppa_peft.core.errors import UserError
from dppa_peft.format.io import state_key
from dppa_peft.merge import load_merged, merge_to_folder
from tests.cli_args import run_cli
from tests.expected import LINEAR_IN_BLOCK, load_weights, top_k_reference
from tests.faults import edit_json, raw_safetensors

Q = "model.layers.0.self_attn.q_proj.weight"
EMBED = "model.embed_tokens.weight"
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, llama_pair):
    """A magnitude adapter at rate 0.9 (q_proj stored with the 'gaps' index)."""
    out = tmp_path_factory.mktemp("adapter") / "a"
    prune(*llama_pair, out, method="magnitude", rate=0.9, progress=False)
    assert json.loads((out / CONFIG).read_text())["tensors"][Q]["encoding"] == "gaps"
    return out


def _copy(adapter, tmp_path, config=None, tensors=None, raw=None):
    """A copy of the adapter with its config and/or tensors edited."""
    folder = shutil.copytree(adapter, tmp_path / "bad")
    if config is not None:
        edit_json(folder / CONFIG, config)
    if tensors is not None:
        stored = load_file(folder / WEIGHTS)
        tensors(stored)
        save_file(stored, folder / WEIGHTS)
    if raw is not None:
        (folder / WEIGHTS).write_bytes(raw((folder / WEIGHTS).read_bytes()))
    return folder


def _merge(capsys, base, folder, out, *extra):
    return run_cli(capsys, "merge", "--base", base, "--adapter", folder, "--out", out, *extra)


def _set(key, value):
    return lambda t: t.__setitem__(key, value)


def _q(part):
    return state_key(Q, part)


BAD_ADAPTERS = {
    "NaN values": (dict(tensors=lambda t: t[_q("values")].__setitem__(0, math.nan)), f"tensor {Q!r} of adapter"),
    "inf values": (dict(tensors=lambda t: t[_q("values")].__setitem__(1, math.inf)), "non-finite value"),
    "NaN DPA factors": (
        dict(config=lambda c: c.update(amplification={"factors": [math.nan], "raw_factors": [1.0]})),
        "amplification.factors[0] must be a finite number, got nan",
    ),
    "index out of range": (dict(tensors=lambda t: t[_q("index")].fill_(254)), "outside its 4096 entries"),
    "too many values": (
        dict(tensors=lambda t: t.__setitem__(_q("values"), torch.cat([t[_q("values")], torch.ones(3)]))),
        "has shape [412], but the config records [409]",
    ),
    "too few values (config agrees)": (
        dict(
            tensors=lambda t: t.__setitem__(_q("values"), t[_q("values")][:-1]),
            config=lambda c: c["tensors"][Q].update(nnz=c["tensors"][Q]["nnz"] - 1),
        ),
        "the index holds 409 positions but 408 values are stored",
    ),
    "missing index tensor": (dict(tensors=lambda t: t.pop(_q("index"))), f"lacks {_q('index')!r}"),
    "missing values tensor": (dict(tensors=lambda t: t.pop(_q("values"))), f"lacks {_q('values')!r}"),
    "index of the wrong dtype": (
        dict(tensors=lambda t: t.__setitem__(_q("index"), t[_q("index")].to(torch.int32))),
        "is torch.int32, not uint8",
    ),
    "partition id without factor": (
        dict(
            tensors=lambda t: t.__setitem__(_q("partition"), torch.full(t[_q("values")].shape, 7, dtype=torch.uint8)),
            config=lambda c: c["tensors"][Q].update(partition=True),
        ),
        "partition id 7 for the 1 amplification factors",
    ),
    "truncated weights file": (dict(raw=lambda b: b[: len(b) - 100]), "truncated"),
    "unknown encoding": (dict(config=lambda c: c["tensors"][Q].update(encoding="zip")), "unknown encoding 'zip'"),
    "negative nnz": (dict(config=lambda c: c["tensors"][Q].update(nnz=-1)), "has nnz -1"),
    "unknown peft_type": (dict(config=lambda c: c.update(peft_type="MAGIC")), "an unknown peft_type 'MAGIC'"),
    "another PEFT type": (dict(config=lambda c: c.update(peft_type="LORA")), "a PEFT LORA adapter"),
    "JSON list as config": (dict(config=lambda c: [c]), "holds a JSON list, not a JSON object"),
    "newer format version": (dict(config=lambda c: c.update(format_version=99)), "newer dppa-peft"),
    "empty tensor table": (dict(config=lambda c: c.update(tensors={})), "records no tensors"),
    "NaN row factors (v2)": (
        dict(
            tensors=lambda t: t.__setitem__(_q("factors"), torch.full((1, 1), math.nan)),
            config=lambda c: c["tensors"][Q].update(factors=[1, 1]),
        ),
        f"tensor '{Q} (factors)' of adapter",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_ADAPTERS))
def test_damaged_adapter_is_a_clear_error_on_merge(kind, adapter, tmp_path, llama_pair, capsys):
    edits, message = BAD_ADAPTERS[kind]
    folder = _copy(adapter, tmp_path, **edits)
    code, err = _merge(capsys, llama_pair[0], folder, tmp_path / "m")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "m").exists()


def test_bad_json_config_names_the_file(adapter, tmp_path, llama_pair, capsys):
    folder = _copy(adapter, tmp_path)
    (folder / CONFIG).write_text('{"peft_type": "SPARSE_DELTA",')
    code, err = _merge(capsys, llama_pair[0], folder, tmp_path / "m")
    assert code == 2 and f"adapter config {folder / CONFIG} is not valid JSON" in err


@pytest.mark.parametrize("kind", ["index out of range", "NaN values", "missing index tensor"])
def test_push_refuses_a_damaged_adapter_before_any_upload(kind, adapter, tmp_path, capsys, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("contacted the Hub"))
    edits, message = BAD_ADAPTERS[kind]
    code, err = run_cli(capsys, "push", _copy(adapter, tmp_path, **edits), "user/never-published")
    assert code == 2 and message in err


def test_intact_adapter_verifies_and_decodes_to_the_pruned_delta(adapter, llama_pair):
    """The fixture's adapter passes ``verify`` (every stored tensor decoded and checked), and every tensor decodes to
    the delta recomputed from the checkpoints: exact top-10% of the in-block linears, the rest whole."""
    handle = SparseDeltaAdapter(adapter)
    handle.verify()
    base, finetuned = (load_weights(folder) for folder in llama_pair)
    assert Q in handle.config.tensors and EMBED in handle.config.tensors
    for name in handle.config.tensors:
        delta = finetuned[name].float() - base[name].float()
        expected = top_k_reference(delta, 0.1) if LINEAR_IN_BLOCK.search(name) and delta.ndim == 2 else delta
        assert torch.equal(handle.sparse_tensor(name).to_dense(), expected), name


SHAPES = {
    "larger": (lambda c: c["tensors"][Q].update(shape=[64, 128]), "with shape [64, 128], but"),
    "smaller": (lambda c: c["tensors"][Q].update(shape=[32, 64]), "with shape [32, 64], but"),
    "vocab_size 10^9": (lambda c: c.update(vocab_size=10**9), "sets vocab_size 1000000000, but none"),
}


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_recorded_shapes_must_fit_the_base(kind, adapter, tmp_path, llama_pair, capsys):
    edit, message = SHAPES[kind]
    folder = _copy(adapter, tmp_path, config=edit)
    code, err = _merge(capsys, llama_pair[0], folder, tmp_path / "m")
    assert code == 2 and message in err, err
    base_model = AutoModelForCausalLM.from_pretrained(llama_pair[0])
    with pytest.raises(UserError, match="the adapter does not fit|vocab_size"):
        load_merged(llama_pair[0], [folder], progress=False)
    with pytest.raises(UserError, match="the adapter does not fit|vocab_size"):
        PeftModel.from_pretrained(base_model, str(folder))


@pytest.mark.parametrize(
    "vocab_size,message", [(None, "but its vocab_size is None"), (150, "but its vocab_size is 150")]
)
def test_grown_rows_must_match_vocab_size(vocab_size, message):
    from dppa_peft.format.config import SparseDeltaConfig
    from dppa_peft.format.validate import check_fits_base

    config = SparseDeltaConfig(
        tensors={EMBED: {"shape": [200, 64], "nnz": 12800, "encoding": "dense"}}, vocab_size=vocab_size
    )
    with pytest.raises(UserError, match=message):
        check_fits_base(config, {EMBED: (128, 64)}, "a", "b")
    check_fits_base(SparseDeltaConfig(tensors=config.tensors, vocab_size=200), {EMBED: (128, 64)}, "a", "b")


def test_unverified_base_is_refused_for_merge_unless_allowed(adapter, tmp_path, llama_pair, capsys):
    folder = _copy(adapter, tmp_path, config=lambda c: c.update(base_fingerprint=None))
    code, err = _merge(capsys, llama_pair[0], folder, tmp_path / "m")
    assert code == 2 and "records no base fingerprint" in err and "--allow-unverified-base" in err
    with pytest.raises(UserError, match="allow_unverified_base=True"):
        load_merged(llama_pair[0], [folder], progress=False)
    code, _ = _merge(capsys, llama_pair[0], folder, tmp_path / "m", "--allow-unverified-base")
    assert code == 0
    reference = tmp_path / "ref"
    assert _merge(capsys, llama_pair[0], adapter, reference)[0] == 0
    assert torch.equal(
        load_file(tmp_path / "m" / "model.safetensors")[Q], load_file(reference / "model.safetensors")[Q]
    )


@pytest.fixture(scope="module")
def grown(tmp_path_factory, llama_pair):
    """A fine-tune with 4 added tokens and its adapter (vocab_size 132)."""
    root = tmp_path_factory.mktemp("grown")
    model = AutoModelForCausalLM.from_pretrained(llama_pair[1])
    model.resize_token_embeddings(132, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[128:] = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(root / "ft")
    prune(llama_pair[0], root / "ft", root / "a", method="magnitude", rate=0.5, progress=False)
    assert SparseDeltaAdapter(root / "a").config.vocab_size == 132
    return root / "a"


def test_vocabulary_growing_adapter_merges_in_either_order(grown, adapter, tmp_path, llama_pair, capsys):
    base = llama_pair[0]
    assert _merge(capsys, base, adapter, tmp_path / "ab", "--adapter", grown)[0] == 0
    assert _merge(capsys, base, grown, tmp_path / "ba", "--adapter", adapter)[0] == 0
    first, second = (load_file(tmp_path / n / "model.safetensors") for n in ("ab", "ba"))
    assert (
        first[EMBED].shape == (132, 64)
        and json.loads((tmp_path / "ab" / "config.json").read_text())["vocab_size"] == 132
    )
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-7), name
    ties = [
        run_cli(
            capsys,
            "merge",
            "--base",
            base,
            "--adapter",
            a,
            "--adapter",
            b,
            "--mode",
            "ties",
            "--out",
            tmp_path / f"t{i}",
        )[0]
        for i, (a, b) in enumerate([(adapter, grown), (grown, adapter)])
    ]
    assert ties == [0, 0]
    t0, t1 = (load_file(tmp_path / f"t{i}" / "model.safetensors")[EMBED] for i in range(2))
    assert torch.allclose(t0, t1, atol=1e-7)


def test_merge_dtype_float32_onto_bf16_rounds_once(tmp_path, llama_pair, capsys):
    """The fp32 output is W_B(bf16→fp32) + δ, not bf16(W_B + δ) widened again."""
    from tests.tiny_models import make_base, make_finetune

    base = make_base(tmp_path / "b16", dtype=torch.bfloat16)
    ft = make_finetune(base, tmp_path / "f16", steps=2)
    prune(base, ft, tmp_path / "a", method="magnitude", rate=0.5, progress=False)
    assert _merge(capsys, base, tmp_path / "a", tmp_path / "m", "--dtype", "float32")[0] == 0
    merged = load_file(tmp_path / "m" / "model.safetensors")[Q]
    delta = SparseDeltaAdapter(tmp_path / "a").sparse_tensor(Q)
    expected = load_file(base / "model.safetensors")[Q].float().reshape(-1).index_add(0, delta.indices, delta.values)
    assert merged.dtype == torch.float32 and torch.equal(merged, expected.reshape(merged.shape))


def test_unreadable_weights_header_on_load(adapter, tmp_path):
    folder = _copy(adapter, tmp_path, raw=lambda b: raw_safetensors(b"[garbage", b""))
    with pytest.raises(UserError, match="not valid JSON"):
        SparseDeltaAdapter(folder)


def test_merge_python_api_gives_the_same_errors(adapter, tmp_path, llama_pair):
    folder = _copy(adapter, tmp_path, tensors=lambda t: t[_q("index")].fill_(254))
    with pytest.raises(UserError, match="outside its 4096 entries"):
        merge_to_folder(llama_pair[0], [folder], tmp_path / "m", progress=False)


@pytest.mark.parametrize("kind", ["index out of range", "NaN values", "negative nnz"])
def test_peft_loading_checks_the_same(kind, adapter, tmp_path, llama_pair):
    """PEFT's own entry point (PeftModel.from_pretrained, then a forward) meets the same validators."""
    edits, message = BAD_ADAPTERS[kind]
    folder = _copy(adapter, tmp_path, **edits)
    with pytest.raises(UserError, match=message.split("'")[0] if "'" in message else message):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_pair[0]), str(folder))
        model(torch.tensor([[1, 2, 3]]))
