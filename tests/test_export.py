"""Stock-PEFT export (SUPERTUNING): loads in a process that never imports dppa_peft, with PEFT and with transformers'
load_adapter, and gives our adapter's merged weights and logits; its sizes; what it refuses."""

from __future__ import annotations

import json
import math
import shutil
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dppa_peft import BaseModelMismatchError, SparseDeltaAdapter, prune
from dppa_peft.publish.export import choose_targets, export_supertuning, global_sparsity
from dppa_peft.cli import main
from tests.expected import PROMPT
from tests.hub_fixtures import run_python
from tests.tiny_models import make_base, make_finetune, tiny_config


def _ours(base, adapter_dir) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and merged weights of our adapter loaded with PEFT (dppa_peft imported here)."""
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter_dir))
    with torch.no_grad():
        logits = model(PROMPT).logits
    return logits, model.merge_and_unload().state_dict()


def test_global_sparsity_fits_every_module_as_peft_counts():
    modules = [(4096, 409), (2048, 204), (8192, 819), (4096, 450), (100, 0)]
    sparsity = global_sparsity(modules)
    assert all(int(n * (1 - sparsity)) >= max(k, 1) for n, k in modules)
    assert int(4096 * (1 - math.nextafter(sparsity, 1.0))) < 450 or sparsity == 0.0  # no looser than needed
    assert global_sparsity([(10, 10)]) == 0.0


def test_a_much_denser_module_is_stored_whole_when_that_is_smaller():
    uniform = {f"m{i}": (8192, 819, 8192 * 2) for i in range(8)}
    assert choose_targets(uniform) == sorted(uniform)
    outlier = {**uniform, "dense": (8192, 6000, 8192 * 2)}  # padding 8 modules to 73% would cost far more
    assert choose_targets(outlier) == sorted(uniform)


@pytest.fixture(scope="module")
def sources(llama_pair, tmp_path_factory) -> dict:
    """Adapters to export: magnitude (uniform density), DARE (densities vary: padding) and an amplified copy."""
    base, ft = llama_pair
    root = tmp_path_factory.mktemp("export_sources")
    magnitude = prune(base, ft, root / "magnitude", method="magnitude", rate=0.9, progress=False)[0]
    dare = prune(base, ft, root / "dare", method="dare", rate=0.9, progress=False)[0]
    amplified = root / "amplified"
    shutil.copytree(magnitude.directory, amplified)
    config = json.loads((amplified / "adapter_config.json").read_text())
    config["amplification"] = {"factors": [1.5], "partitions": 1}
    (amplified / "adapter_config.json").write_text(json.dumps(config))
    return {"magnitude": magnitude, "dare": dare, "amplified": SparseDeltaAdapter(amplified)}


@pytest.mark.slow
def test_supertuning_loads_exactly_without_dppa_peft(sources, llama_pair, hub_repo_id, tmp_path, capsys):
    base, _ = llama_pair
    assert main(["push", str(sources["magnitude"].directory), hub_repo_id, "--export-format", "supertuning"]) == 0
    assert main(["export", str(sources["dare"].directory), str(tmp_path / "dare"), "--format", "supertuning"]) == 0
    line = capsys.readouterr().out
    assert "SUPERTUNING sparsity" in line and "zero padding entries" in line
    export_supertuning(sources["amplified"], tmp_path / "amplified", progress=False)
    card = ModelCard.load(hub_repo_id)
    assert set(card.data.tags) >= {"dppa-peft", "supertuning", "sparse-delta"} and card.data.library_name == "peft"
    assert "import dppa_peft" not in card.text
    config = json.loads((tmp_path / "dare" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SUPERTUNING" and config["save_precomputed_indices"] is True

    sources_for_child = {
        "magnitude": hub_repo_id,
        "dare": str(tmp_path / "dare"),
        "amplified": str(tmp_path / "amplified"),
    }
    script = textwrap.dedent(f"""
        import sys, torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        prompt, out = torch.tensor({PROMPT.tolist()}), {{}}
        for name, source in {sources_for_child!r}.items():
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(base)!r}), source)
            plain = AutoModelForCausalLM.from_pretrained({str(base)!r})
            plain.load_adapter(source)
            with torch.no_grad():
                out[name] = {{"peft": model(prompt).logits, "transformers": plain(prompt).logits,
                             "merged": model.merge_and_unload().state_dict()}}
        assert "dppa_peft" not in sys.modules, "the consumer must not need dppa_peft"
        torch.save(out, {str(tmp_path / "stock.pt")!r})
    """)
    run_python(script)
    stock = torch.load(tmp_path / "stock.pt")
    for name, adapter in sources.items():
        logits, weights = _ours(base, adapter.directory)
        got = stock[name]
        assert set(got["merged"]) == set(weights), name
        for key, tensor in weights.items():
            assert torch.allclose(got["merged"][key], tensor, rtol=0, atol=1e-6), (name, key)
        for route in ("peft", "transformers"):
            assert torch.allclose(got[route], logits, rtol=0, atol=1e-6), (name, route)


def test_supertuning_size_cost(tmp_path):
    """bf16 fine-tune at rate 0.9: our sparse part is 3 bytes per kept entry (bf16 value + 1 gap byte), SUPERTUNING's
    8 (fp32 value + int32 index), plus padding; dense tensors cost the same (whole modules in bf16)."""
    base = make_base(tmp_path / "base", dtype=torch.bfloat16)
    ft = make_finetune(base, tmp_path / "ft", steps=2)
    adapter, summary = prune(base, ft, tmp_path / "a", method="magnitude", rate=0.9, progress=False)
    export = export_supertuning(adapter, tmp_path / "st", progress=False)
    sparse_bytes = (export.kept + export.padding) * 8
    assert export.padding == 0 and len(export.targets) == summary.pruned_tensors == 14
    assert sparse_bytes / summary.adapter_bytes == pytest.approx(8 / 3, rel=0.01)
    assert 1.0 < export.size_ratio < 8 / 3  # the whole-stored embeddings, lm_head and norms dilute it
    logits, weights = _ours(base, adapter.directory)
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(export.directory))
    with torch.no_grad():
        assert torch.equal(stock(PROMPT).logits, logits)
    assert all(torch.equal(t, weights[k]) for k, t in stock.merge_and_unload().state_dict().items())


def test_export_refuses_what_stock_peft_cannot_load_exactly(sources, llama_pair, tmp_path):
    base, _ = llama_pair
    other = make_base(tmp_path / "other", seed=123)
    with pytest.raises(BaseModelMismatchError, match="is not the base"):
        export_supertuning(sources["magnitude"], tmp_path / "x", base=other, progress=False)

    grown = AutoModelForCausalLM.from_pretrained(base)
    grown.resize_token_embeddings(140, mean_resizing=False)
    grown.save_pretrained(tmp_path / "grown")
    adapter = prune(base, tmp_path / "grown", tmp_path / "a-grown", method="magnitude", progress=False)[0]
    with pytest.raises(ValueError, match="grows the vocabulary"):
        export_supertuning(adapter, tmp_path / "x", progress=False)

    shape = dict(hidden_size=32, intermediate_size=64, num_key_value_heads=4, tie_word_embeddings=True)
    tied = AutoModelForCausalLM.from_config(tiny_config(layers=1, **shape))
    tied.save_pretrained(tmp_path / "tied")
    ft = make_finetune(tmp_path / "tied", tmp_path / "tied-ft", steps=1)
    adapter = prune(tmp_path / "tied", ft, tmp_path / "a-tied", method="magnitude", progress=False)[0]
    with pytest.raises(ValueError, match="is tied to"):
        export_supertuning(adapter, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
