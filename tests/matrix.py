"""The common test matrix's models, independent references and checks (the tests are in ``test_matrix.py``; the
``matrix`` fixture is in ``conftest.py``). ``check_method`` runs every method check on one method: CONTRIBUTING.md's
worked example uses it.

Each method's adapter comes in three variants: ``plain`` (pruned), ``dpa`` (pruned storing two DPA partitions, then
amplified with the fixed factors ``DPA_FACTORS``: no search) and ``learned`` (learned row factors, a few Adam steps).
Their references are computed here from the safetensors files: the method's kept entries, the inner partition by the
method's own density at the 0.9 boundary, and the learned factor table read from the adapter file (the learning
itself is tested in ``test_learned.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dppa_peft import SparseDeltaAdapter, amplify, load_merged, merge_to_folder, prune
from dppa_peft.delta.scope import Scope
from dppa_peft.format.io import WEIGHTS_FILE, state_key
from dppa_peft.methods import create_method
from dppa_peft.publish.export import export_supertuning
from tests.expected import load_weights, logits, logits_with
from tests.helpers_methods import observe_all
from tests.tiny_models import make_base, make_finetune, make_tokenizer

RATE = 0.8
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MERGE_WEIGHTS = [0.7, 1.3]
VARIANTS = ("plain", "dpa", "learned")
DPA_RATES = [0.9, RATE]
DPA_FACTORS = [1.5, 0.75]  # exact in fp32: the reference multiplies by the same numbers
PROMPTS = ["1+2=3;", "4+5=9;", "6+7=13;", "8+9=17;", "3+3=6;"]


@dataclass(frozen=True)
class Pair:
    """A tiny base and two fine-tunes of it, saved in one dtype."""

    base: Path
    finetunes: tuple[Path, Path]
    dtype: torch.dtype


class Matrix:
    """The models of the matrix (one Pair per dtype) and every adapter pruned from them, each pruned once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pairs: dict[str, Pair] = {}
        for key, dtype in DTYPES.items():
            base = make_base(root / key / "base", dtype=dtype)
            finetunes = tuple(make_finetune(base, root / key / f"ft{i}", steps=2, seed=20 + i) for i in range(2))
            self.pairs[key] = Pair(base, finetunes, dtype)
        self._adapters: dict[tuple[str, str, int, str], Path] = {}
        (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        self.tokenizer = make_tokenizer(root / "tokenizer")

    def adapter(self, method: str, dtype: str, which: int = 0, variant: str = "plain") -> Path:
        """The ``variant`` adapter of ``method`` on fine-tune ``which`` of the ``dtype`` pair."""
        key = (method, dtype, which, variant)
        if key not in self._adapters:
            pair = self.pairs[dtype]
            finetuned = pair.finetunes[which]
            out = self.root / dtype / f"{method}-{which}-{variant}"
            if variant == "plain":
                adapter = prune(pair.base, finetuned, out, method=method, rate=RATE, progress=False)[0]
            elif variant == "dpa":
                stored = prune(
                    pair.base, finetuned, out.with_name(out.name + "-ids"), method=method, rate=RATE,
                    partition_rates=DPA_RATES, progress=False,
                )[0]  # fmt: skip
                adapter = amplify(stored, out, factors=DPA_FACTORS, progress=False)[0]
            else:
                adapter = amplify(
                    self.adapter(method, dtype, which),
                    out,
                    finetuned=finetuned,
                    search="learned",
                    calibration=str(self.root / "prompts.txt"),
                    tokenizer=str(self.tokenizer),
                    learn_steps=2,
                    continuation_tokens=2,
                    progress=False,
                )[0]
            self._adapters[key] = adapter.directory
        return self._adapters[key]


def reference_deltas(
    pair: Pair, which: int, method: str, variant: str = "plain", adapter: Path | None = None
) -> dict[str, torch.Tensor]:
    """The fp32 delta an adapter of ``method`` must apply to each tensor, computed here from the two safetensors
    files: the method's kept entries (statistics passes in name order, like the pipeline), cast to the fine-tune's
    dtype as they are stored; for ``dpa``, times ``DPA_FACTORS[0]`` on the entries the method also keeps at the
    0.9 boundary and ``DPA_FACTORS[1]`` on the others; for ``learned``, times each output row's factor read from
    ``adapter``'s file (tensors without a table keep factor 1)."""
    base, finetuned = load_weights(pair.base), load_weights(pair.finetunes[which])
    scope = Scope()
    infos = {name: scope.classify(name, tuple(w.shape)) for name, w in base.items()}
    deltas = {name: finetuned[name].float() - base[name].float() for name in base}
    in_scope = [(infos[name], deltas[name]) for name in sorted(base) if infos[name].in_scope]
    pruner = observe_all(create_method(method, RATE), in_scope)
    tables = load_weights(adapter) if variant == "learned" and adapter is not None else {}
    out = {}
    for name, delta in deltas.items():
        stored_dtype = finetuned[name].dtype
        if not infos[name].in_scope:
            out[name] = delta.to(stored_dtype).float()
            continue
        kept = pruner.prune(infos[name], delta, pruner.plan(infos[name]).density).to_dense().to(stored_dtype).float()
        if variant == "dpa":
            inner = pruner.prune(infos[name], delta, pruner.plan(infos[name], DPA_RATES[0]).density).to_dense() != 0
            kept = kept * torch.where(inner, DPA_FACTORS[0], DPA_FACTORS[1])
        elif variant == "learned":
            table = tables.get(state_key(name, "factors"))
            assert table is not None and tuple(table.shape) == (1, delta.shape[0]), name  # one partition, per row
            kept = kept * table[0].reshape(-1, *[1] * (delta.dim() - 1))
        out[name] = kept
    return out


def reference_weights(
    pair: Pair, deltas: list[dict[str, torch.Tensor]], weights: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """``cast(W_B.float() + Σ w_i·δ_i)``, accumulated in fp32 in adapter order (docs/algorithms.md §13)."""
    weights = [1.0] * len(deltas) if weights is None else weights
    out = {}
    for name, weight in load_weights(pair.base).items():
        total = weight.float()
        for delta, w in zip(deltas, weights):
            total = total + w * delta[name]
        out[name] = total.to(weight.dtype)
    return out


def load_base(pair: Pair) -> torch.nn.Module:
    """The pair's base model, in the pair's dtype."""
    return AutoModelForCausalLM.from_pretrained(pair.base, dtype=pair.dtype)


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(actual) == sorted(expected), what
    differing = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not differing, f"{what}: {len(differing)} tensors differ, e.g. {differing[:3]}"


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's own weights (names as in the checkpoint, inside an adapter-wrapped model too)."""
    return {
        name.replace(".base_layer", ""): tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if ".sparse_delta." not in name
    }


def check_peft_round_trip(method: str, pair: Pair, adapter: Path, other: Path) -> None:
    """PEFT load and forward equal the independent reference; merge/unmerge is exact; ``delete_adapter`` leaves the
    first adapter working."""
    expected = reference_weights(pair, [reference_deltas(pair, 0, method)])
    reference_logits = logits_with(pair.base, expected, pair.dtype)
    base_state = weights_of(load_base(pair))
    model = PeftModel.from_pretrained(load_base(pair), str(adapter))
    assert torch.equal(logits(model), reference_logits), "PEFT forward vs reference"
    model.merge_adapter()
    assert_same_weights(weights_of(model.get_base_model()), expected, "merged weights vs reference")
    assert torch.equal(logits(model), reference_logits), "merged forward vs reference"
    model.unmerge_adapter()
    assert_same_weights(weights_of(model.get_base_model()), base_state, "unmerged weights vs base")

    model.load_adapter(str(other), adapter_name="other")
    model.set_adapter("other")
    assert not torch.equal(logits(model), reference_logits)  # the other adapter is active now
    model.set_adapter("default")
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"]
    assert not any(".other" in name for name in model.state_dict())
    assert_same_weights(weights_of(model.merge_and_unload()), expected, "merge_and_unload after delete_adapter")


def check_merge_paths(method: str, pair: Pair, adapter: Path, out: Path) -> None:
    """``merge_and_unload``, ``load_merged`` and ``merge_to_folder`` give the reference weights, bit for bit."""
    expected = reference_weights(pair, [reference_deltas(pair, 0, method)])
    peft = PeftModel.from_pretrained(load_base(pair), str(adapter)).merge_and_unload()
    assert_same_weights(weights_of(peft), expected, "merge_and_unload")
    in_memory = load_merged(pair.base, [adapter], dtype=pair.dtype, progress=False)
    assert_same_weights(weights_of(in_memory), expected, "load_merged")
    assert_same_weights(
        load_weights(merge_to_folder(pair.base, [adapter], out, progress=False)), expected, "merge_to_folder"
    )


def check_method(method: str, matrix: Matrix) -> None:
    """Every check of the method matrix for one method, in both dtypes."""
    for dtype, pair in matrix.pairs.items():
        adapter, other = matrix.adapter(method, dtype, 0), matrix.adapter(method, dtype, 1)
        check_peft_round_trip(method, pair, adapter, other)
        check_merge_paths(method, pair, adapter, matrix.root / dtype / f"merged-{method}")


def check_variant(method: str, variant: str, pair: Pair, adapter: Path, out: Path) -> None:
    """A ``variant`` adapter (see the module doc): PEFT load and forward equal the independent reference, and so do
    ``merge_and_unload``, ``load_merged``, ``merge_to_folder`` and the stock-PEFT export."""
    expected = reference_weights(pair, [reference_deltas(pair, 0, method, variant, adapter)])
    model = PeftModel.from_pretrained(load_base(pair), str(adapter))
    assert torch.equal(logits(model), logits_with(pair.base, expected, pair.dtype)), f"PEFT forward ({variant})"
    assert_same_weights(weights_of(model.merge_and_unload()), expected, f"merge_and_unload ({variant})")
    in_memory = load_merged(pair.base, [adapter], dtype=pair.dtype, progress=False)
    assert_same_weights(weights_of(in_memory), expected, f"load_merged ({variant})")
    folder = merge_to_folder(pair.base, [adapter], out / "merged", progress=False)
    assert_same_weights(load_weights(folder), expected, f"merge_to_folder ({variant})")
    check_export(pair, adapter, expected, out / "export", variant)


def check_export(pair: Pair, adapter: Path, expected: dict[str, torch.Tensor], out: Path, what: str) -> None:
    """The stock-PEFT (SUPERTUNING) export, loaded by PEFT alone and merged, gives the reference weights: bit for bit,
    except the entries the export counts as inexact (a bf16 base whose delta cancels most of a weight)."""
    export = export_supertuning(SparseDeltaAdapter(adapter), out, progress=False)
    assert (out / WEIGHTS_FILE).is_file() and export.kept > 0
    stock = weights_of(PeftModel.from_pretrained(load_base(pair), str(out)).merge_and_unload())
    assert sorted(stock) == sorted(expected), what
    differing = sum(int((stock[name] != expected[name]).sum()) for name in expected)
    assert differing == export.inexact, f"export ({what}): {differing} entries differ, {export.inexact} counted"
    if pair.dtype == torch.float32:
        assert export.inexact == 0, what
