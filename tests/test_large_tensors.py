"""Tensors above 2^24 entries (every 7B embedding has 131M) through prune with every method, save, PEFT load,
load_merged, merge_to_folder and the SUPERTUNING export; index arithmetic above 2^31 where it can be tested cheaply.

Float32 positions cannot address that many entries and ``torch.quantile`` refuses them. The model is a 1-block bf16
Llama with a 32768 x 520 embedding and lm_head; every method's selection runs on a direct in-scope tensor of the
same size (the pipeline around it is the one the model goes through).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dppa_peft import load_merged, merge_to_folder, prune
from dppa_peft.format.encoding import encode
from dppa_peft.io.sampling import tensor_sample
from dppa_peft.methods import METHODS, SparseDelta, create_method
from dppa_peft.methods.dare import dare_keep_mask
from dppa_peft.methods.selection import keep_count
from dppa_peft.publish import export as export_module
from dppa_peft.publish.export import export_supertuning
from dppa_peft.delta.scope import TensorInfo
from tests.expected import load_weights
from tests.tiny_models import tiny_config

pytestmark = pytest.mark.slow  # tensors above 2^24 entries

VOCAB, HIDDEN = 32768, 520  # embedding and lm_head: 17,039,360 entries > 2^24 = 16,777,216
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
DIRECT_SHAPE = (2**18 + 16, 64)  # 16,778,240 entries: an in-scope linear for every method, without the I/O
RATE = 0.9


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A 1-block bf16 Llama with a 32768 x 520 vocabulary, a fine-tune (base + small noise) and the fp32 deltas."""
    root = tmp_path_factory.mktemp("big")
    config = tiny_config(layers=1, vocab_size=VOCAB, hidden_size=HIDDEN, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(root / "base")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_((torch.randn(param.shape, generator=generator) * 2e-4).to(param.dtype))
    model.save_pretrained(root / "ft")
    base, ft = load_weights(root / "base"), load_weights(root / "ft")
    deltas = {name: ft[name].float() - base[name].float() for name in (EMBED, HEAD)}
    assert all(delta.numel() > 2**24 for delta in deltas.values())
    return root / "base", root / "ft", deltas


def reference_top_k(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k largest |flat| (ties: lowest index), with torch's own kthvalue (not the code under test)."""
    scores = flat.abs()
    threshold = scores.kthvalue(scores.numel() - k + 1).values
    mask = scores > threshold
    mask[(scores == threshold).nonzero().reshape(-1)[: k - int(mask.sum())]] = True
    indices = mask.nonzero().reshape(-1)
    return indices[flat[indices] != 0]


def expected_kept(
    method: str, info: TensorInfo, delta: torch.Tensor, density: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Independent (indices, values) for every method whose choice is deterministic given the delta (not DELLA)."""
    flat = delta.reshape(-1)
    n = flat.numel()
    if method in ("magnitude", "ties", "dp", "owl"):
        indices = reference_top_k(flat, keep_count(density, n))
    elif method == "breadcrumbs":
        top = reference_top_k(flat, keep_count(density, n) + keep_count(0.01, n))
        indices = top[~torch.isin(top, reference_top_k(flat, keep_count(0.01, n)))]
    elif method == "dare":
        keep = dare_keep_mask(info, density, seed=0).reshape(-1) & (flat != 0)
        indices = keep.nonzero().reshape(-1)
        return indices, flat[indices] / density
    else:
        return None
    return indices, flat[indices]


@pytest.fixture(scope="module")
def direct_delta() -> tuple[TensorInfo, torch.Tensor]:
    """An in-scope delta above 2^24 entries, with bf16-like ties and exact zeros."""
    generator = torch.Generator().manual_seed(2)
    delta = (torch.randn(DIRECT_SHAPE, generator=generator) * 1e-3).bfloat16().float()
    delta[:, ::7] = 0.0
    return TensorInfo("model.layers.0.mlp.down_proj.weight", DIRECT_SHAPE, block=0, module="mlp.down_proj"), delta


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_prunes_a_tensor_above_2_24(direct_delta, method):
    info, delta = direct_delta
    pruner = create_method(method, RATE)
    if pruner.needs_statistics:
        pruner.observe(info, delta, 0)
    density = pruner.plan(info).density
    sparse = pruner.prune(info, delta, density)
    stored = encode(sparse, torch.float32)
    assert torch.equal(stored.indices(), sparse.indices) and int(sparse.indices[-1]) > 2**24
    expected = expected_kept(method, info, delta, density)
    if expected is not None:
        assert torch.equal(sparse.indices, expected[0]) and torch.equal(sparse.values, expected[1])
    else:  # DELLA: a random draw, each kept entry rescaled by 1/q with q in [d - eps, d + eps] = [0.03, 0.17]
        ratio = sparse.values / delta.reshape(-1)[sparse.indices]
        assert 1 / 0.17 - 1e-3 < float(ratio.min()) and float(ratio.max()) < 1 / 0.03 + 1e-3
        assert 0.1 < sparse.nnz / int((delta != 0).sum()) < 0.12  # zeros rank lowest: nonzeros are kept above d


@pytest.fixture(scope="module")
def adapters(big_pair, tmp_path_factory) -> dict:
    """magnitude (embedding and lm_head magnitude-pruned outside the scope) and dp (kept dense)."""
    base, ft, _ = big_pair
    root = tmp_path_factory.mktemp("big_adapters")
    return {
        "magnitude": prune(
            base, ft, root / "magnitude", method="magnitude", rate=RATE, outside_scope="magnitude", progress=False
        )[0],
        "dp": prune(base, ft, root / "dp", method="dp", rate=RATE, progress=False)[0],
    }


def test_prune_stores_tensors_above_2_24_exactly(adapters, big_pair):
    _, _, deltas = big_pair
    for name in (EMBED, HEAD):
        flat = deltas[name].reshape(-1)
        stored = adapters["magnitude"].sparse_tensor(name)
        expected = reference_top_k(flat, keep_count(1 - RATE, flat.numel()))
        assert torch.equal(stored.indices, expected) and int(expected[-1]) > 2**24
        assert torch.equal(stored.values, flat[expected].bfloat16().float())  # stored in the checkpoint dtype
        dense = adapters["dp"].sparse_tensor(name)
        assert adapters["dp"].config.tensors[name].encoding == "dense"
        assert torch.equal(dense.values, flat.bfloat16().float())


def test_peft_load_load_merged_merge_to_folder_and_export_agree(adapters, big_pair, tmp_path):
    base, _, _ = big_pair
    adapter = adapters["magnitude"]
    base_weights = load_weights(base)
    expected = {
        name: (base_weights[name].float() + adapter.sparse_tensor(name).to_dense()).bfloat16() for name in (EMBED, HEAD)
    }
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter.directory))
    merged = peft_model.merge_and_unload().state_dict()
    in_memory = load_merged(base, [adapter], progress=False).state_dict()
    folder = load_weights(merge_to_folder(base, [adapter], tmp_path / "merged", progress=False))
    export = export_supertuning(adapter, tmp_path / "stock", base=base, progress=False)
    assert "lm_head" in export.targets
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "stock"))
    stock_merged = stock.merge_and_unload().state_dict()
    for name in (EMBED, HEAD):
        for weights in (merged, in_memory, folder, stock_merged):
            assert torch.equal(weights[name], expected[name]), name
    indices = load_file(tmp_path / "stock" / "adapter_model.safetensors")[
        "base_model.model.lm_head.supertuning_indices"
    ]
    assert indices.dtype == torch.int32 and int(indices.max()) > 2**24


def test_two_adapters_with_dense_and_sparse_tensors_above_2_24_sum(adapters, big_pair):
    base, _, _ = big_pair
    base_weights = load_weights(base)
    merged = load_merged(base, [adapters["magnitude"], adapters["dp"]], weights=[0.5, 1.0], progress=False)
    for name in (EMBED, HEAD):
        total = base_weights[name].float().reshape(-1).clone()
        for adapter, weight in ((adapters["magnitude"], 0.5), (adapters["dp"], 1.0)):
            sparse = adapter.sparse_tensor(name)
            total.index_add_(0, sparse.indices, sparse.values * weight)
        assert torch.equal(merged.state_dict()[name].reshape(-1), total.bfloat16())


def test_export_stores_linears_beyond_int32_indices_whole(adapters, big_pair, tmp_path, monkeypatch):
    """A linear with more entries than int32 indices address goes to modules_to_save (limit lowered to lm_head's)."""
    base, _, _ = big_pair
    monkeypatch.setattr(export_module, "MAX_SPARSE_NUMEL", VOCAB * HIDDEN - 1)
    export = export_supertuning(adapters["magnitude"], tmp_path / "stock", base=base, progress=False)
    assert "lm_head" not in export.targets and "lm_head" in export.modules_to_save


def test_gaps_encoding_addresses_positions_beyond_2_31():
    indices = torch.tensor([0, 2**31 + 5, 2**32 + 7])
    encoded = encode(SparseDelta(indices, torch.ones(3), (2**32 + 8,)), torch.bfloat16)
    assert encoded.encoding == "gaps" and torch.equal(encoded.indices(), indices)


def test_fingerprint_samples_the_last_entry_of_a_tensor_above_2_24():
    tensor = torch.zeros(2**24 + 3, dtype=torch.bfloat16)
    tensor[-1] = 1.0
    sample = tensor_sample(tensor)
    assert sample.endswith(torch.tensor([1.0], dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
