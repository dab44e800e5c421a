"""The common test matrix's models, independent references and checks (the tests are in ``test_matrix.py``; the
``matrix`` fixture is in ``conftest.py``). ``check_method`` runs every method check on one method: CONTRIBUTING.md's
worked example uses it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dppa_peft import load_merged, merge_to_folder, prune
from dppa_peft.methods import create_method
from dppa_peft.delta.scope import Scope
from tests.expected import load_weights, logits, logits_with
from tests.helpers_methods import observe_all
from tests.tiny_models import make_base, make_finetune

RATE = 0.8
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MERGE_WEIGHTS = [0.7, 1.3]


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
        self._adapters: dict[tuple[str, str, int], Path] = {}

    def adapter(self, method: str, dtype: str, which: int = 0) -> Path:
        """The adapter of ``method`` on fine-tune ``which`` of the ``dtype`` pair."""
        key = (method, dtype, which)
        if key not in self._adapters:
            pair = self.pairs[dtype]
            out = self.root / dtype / f"{method}-{which}"
            self._adapters[key] = prune(
                pair.base, pair.finetunes[which], out, method=method, rate=RATE, progress=False
            )[0].directory
        return self._adapters[key]


def reference_deltas(pair: Pair, which: int, method: str) -> dict[str, torch.Tensor]:
    """The fp32 delta an adapter of ``method`` must apply to each tensor, computed here from the two safetensors
    files: the method's kept entries (statistics passes in name order, like the pipeline), cast to the fine-tune's
    dtype as they are stored."""
    base, finetuned = load_weights(pair.base), load_weights(pair.finetunes[which])
    scope = Scope()
    infos = {name: scope.classify(name, tuple(w.shape)) for name, w in base.items()}
    deltas = {name: finetuned[name].float() - base[name].float() for name in base}
    in_scope = [(infos[name], deltas[name]) for name in sorted(base) if infos[name].in_scope]
    pruner = observe_all(create_method(method, RATE), in_scope)
    out = {}
    for name, delta in deltas.items():
        if infos[name].in_scope:
            delta = pruner.prune(infos[name], delta, pruner.plan(infos[name]).density).to_dense()
        out[name] = delta.to(finetuned[name].dtype).float()
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
