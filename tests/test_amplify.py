"""DPA: partitions, combine rules, the two search strategies, objectives, in-place candidates, API and CLI."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from dppa_peft import SparseDeltaAdapter, amplify, prune, prune_and_amplify
from dppa_peft.kernel.weights import effective_values
from dppa_peft.format.encoding import EncodedTensor
from dppa_peft.amplify.candidate import AmplifiedModel, load_base_model
from dppa_peft.format.amplification import amplification_record, effective_factors
from dppa_peft.amplify.objectives import KLObjective, TaskRatioObjective, read_texts
from dppa_peft.evaluation.runner import Evaluator
from dppa_peft.format.partitions import Partitions, adapter_partitions
from dppa_peft.methods.partitions import check_partition_rates, default_partition_rates, partition_ids
from dppa_peft.amplify.search import calls_for_tolerance, search_factors
from dppa_peft.cli import main
from dppa_peft.methods import METHODS, SparseDelta, create_method
from dppa_peft.methods.dare import dare_keep_mask
from dppa_peft.methods.magnitude import Magnitude
from dppa_peft.delta.scope import Scope
from tests.cli_args import flags, run_prune
from tests.expected import LINEAR_IN_BLOCK, load_weights, logits_with, top_k_reference
from tests.expected import logits as _logits
from tests.tiny_models import make_base, make_finetune, make_tokenizer

PROMPTS = ["the cat sat on the mat", "hello world", "2 + 3 = 5", "once upon a time", "abc def ghi jkl"]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """A tokenizer folder and a JSONL calibration file of short prompts."""
    root = tmp_path_factory.mktemp("calibration")
    path = root / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in PROMPTS))
    return make_tokenizer(root / "tokenizer"), path


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory, llama_pair):
    """A magnitude adapter at rate 0.7 with partitions 0.9 / 0.8 / 0.7 stored while pruning."""
    base, ft = llama_pair
    out = tmp_path_factory.mktemp("partitioned") / "a"
    return prune(base, ft, out, method="magnitude", rate=0.7, partition_rates=[0.9, 0.8, 0.7], progress=False)[0]


def partition_reference(base, ft, densities, factors, unpruned=1.0):
    """W_B + Σ_i factor_i · (top-k(δ, d_i) − top-k(δ, d_{i−1})) for in-block linears, ``unpruned``·δ elsewhere."""
    base_w, ft_w = load_weights(base), load_weights(ft)
    out = {}
    for name, b in base_w.items():
        delta = ft_w[name].float() - b.float()
        if LINEAR_IN_BLOCK.search(name) and delta.ndim == 2:
            update, previous = torch.zeros_like(delta), torch.zeros_like(delta)
            for density, factor in zip(densities, factors):
                kept = top_k_reference(delta, density)
                update += factor * (kept - previous)
                previous = kept
        else:
            update = unpruned * delta
        out[name] = b.float() + update
    return out


# partitions -------------------------------------------------------------------------------------------------------


def test_default_partition_rates_and_validation():
    assert default_partition_rates(0.9) == [0.9]
    assert default_partition_rates(0.8) == [0.9, 0.8]
    assert default_partition_rates(0.75) == [0.9, 0.8, 0.75]
    assert default_partition_rates(0.95) == [0.95]
    assert default_partition_rates(0.5) == [0.9, 0.8, 0.7, 0.6, 0.5]
    with pytest.raises(ValueError, match="last partition rate must be the target pruning rate 0.8"):
        check_partition_rates([0.9, 0.7], 0.8)
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_partition_rates([0.8, 0.9, 0.8], 0.8)


def test_partitions_stored_while_pruning_are_nested_top_k_sets(partitioned, llama_pair):
    base, ft = llama_pair
    base_w, ft_w = load_weights(base), load_weights(ft)
    block = partitioned.config.amplification
    assert block["partition_rates"] == [0.9, 0.8, 0.7] and block["factors"] == [1.0, 1.0, 1.0]
    for name, record in partitioned.config.tensors.items():
        if not record.pruned:
            assert not record.partition
            continue
        assert record.partition and record.partition_densities == pytest.approx([0.1, 0.2, 0.3])
        encoded = partitioned.encoded(name)
        indices, ids = encoded.indices(), encoded.partition.long()
        delta = (ft_w[name].float() - base_w[name].float()).reshape(-1)
        for pid, density in enumerate((0.1, 0.2, 0.3)):
            expected = top_k_reference(delta, density).nonzero().reshape(-1)
            assert torch.equal(indices[ids <= pid], expected), (name, pid)


def test_partitions_derived_from_stored_values_match_pruning_time(tmp_path, llama_pair, partitioned):
    base, ft = llama_pair
    plain = prune(base, ft, tmp_path / "plain", method="magnitude", rate=0.7, progress=False)[0]
    derived = adapter_partitions(plain, [0.9, 0.8, 0.7])
    stored = adapter_partitions(partitioned, [0.9, 0.8, 0.7])
    assert derived.ids.keys() == stored.ids.keys() and len(derived.ids) == 14
    for name in derived.ids:
        assert torch.equal(derived.ids[name], stored.ids[name]), name
        assert derived.densities[name] == pytest.approx(stored.densities[name])
    assert adapter_partitions(plain).rates == [0.9, 0.8, 0.7]  # default: 0.9, 0.8, ... down to the rate


def test_dare_partitions_follow_the_nested_masks(tmp_path, llama_pair):
    base, ft = llama_pair
    stored = prune(
        base, ft, tmp_path / "stored", method="dare", rate=0.8, seed=5, partition_rates=[0.9, 0.8], progress=False
    )[0]
    plain = prune(base, ft, tmp_path / "plain", method="dare", rate=0.8, seed=5, progress=False)[0]
    derived = adapter_partitions(plain)
    name = "model.layers.1.mlp.down_proj.weight"
    info = Scope().classify(name, stored.config.tensors[name].shape)
    narrow = dare_keep_mask(info, 0.1, seed=5).reshape(-1)
    encoded = stored.encoded(name)
    assert torch.equal(encoded.partition.bool(), ~narrow[encoded.indices()])  # id 0 exactly where u < 0.1
    assert torch.equal(derived.ids[name], encoded.partition)


@pytest.mark.parametrize("method", ["ties", "owl"])
def test_every_magnitude_ranked_method_derives_partitions_from_its_stored_values(tmp_path, llama_pair, method):
    base, ft = llama_pair
    stored = prune(base, ft, tmp_path / "stored", method=method, rate=0.8, partition_rates=[0.9, 0.8], progress=False)[
        0
    ]
    plain = prune(base, ft, tmp_path / "plain", method=method, rate=0.8, progress=False)[0]
    derived = adapter_partitions(plain)
    assert len(derived.ids) == 14
    for name, ids in derived.ids.items():
        assert torch.equal(ids, stored.encoded(name).partition), name
        assert derived.densities[name] == pytest.approx(stored.config.tensors[name].partition_densities)
    amplified, result = amplify(plain, tmp_path / "dpa", factors=[1.5, 1.0], progress=False)
    assert result is None and amplified.config.amplification["factors"] == [1.5, 1.0]


def test_non_nested_method_and_underivable_adapter_errors(tmp_path, llama_pair):
    class Shuffled(Magnitude):
        nested = False

    info = Scope().classify("model.layers.0.mlp.up_proj.weight", (2, 4))
    delta = torch.randn(2, 4)
    method = Shuffled(0.5)
    with pytest.raises(ValueError, match=r"does not keep nested sets.*\(breadcrumbs, dare, della, dp, magnitude"):
        partition_ids(method, info, delta, method.prune(info, delta, 0.5), [0.75, 0.5])
    base, ft = llama_pair
    le = prune(base, ft, tmp_path / "le", method="magnitude", rate=0.8, tie_mode="threshold_le", progress=False)[0]
    with pytest.raises(ValueError, match="prune again with partitions stored"):
        adapter_partitions(le)


# combine rules ----------------------------------------------------------------------------------------------------

DELTA = torch.tensor([0.9, -0.5, 0.3, 0.1, -0.05])
KEPT = SparseDelta(torch.tensor([0, 1]), DELTA[:2], (5,))  # P_A = {0}, P_B = {1}
IDS = torch.tensor([0, 1], dtype=torch.uint8)


def _combined(raw, combine):
    encoded = EncodedTensor("bitmask", (5,), KEPT.values, partition=IDS)
    kept = SparseDelta(KEPT.indices, effective_values(encoded, effective_factors(raw, combine)), (5,))
    return kept.to_dense().tolist()


@pytest.mark.parametrize(
    "raw,expected",
    [
        ((1.8, 1.0), [1.62, -0.5, 0, 0, 0]),
        ((1.8, 0.0), [1.62, 0, 0, 0, 0]),
        ((1.0, 1.3), [1.17, -0.65, 0, 0, 0]),  # r_B > r_A: P_A takes r_B
        ((1.5, 1.2), [1.35, -0.6, 0, 0, 0]),
    ],
)
def test_max_combine_reproduces_the_released_table(raw, expected):
    assert _combined(raw, "max") == pytest.approx(expected)


def test_independent_combine_and_unpruned_factor():
    assert _combined((1.0, 1.3), "independent") == pytest.approx([0.9, -0.65, 0, 0, 0])
    assert _combined((1.8, 1.0), "independent") == pytest.approx([1.62, -0.5, 0, 0, 0])
    block = amplification_record([0.9, 0.8], [1.0, 1.3], "max", amplify_unpruned=True)
    assert block["factors"] == [1.3, 1.3] and block["raw_factors"] == [1.0, 1.3] and block["unpruned_factor"] == 1.3
    assert amplification_record([0.9, 0.8], [1.8, 0.0])["unpruned_factor"] == 1.0
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        effective_factors([1.0, -0.5])


# search strategies ------------------------------------------------------------------------------------------------


def _toy(opt_a, opt_b):
    return lambda f: 10.0 - (f[0] - opt_a) ** 2 - (f[1] - opt_b) ** 2


def _evaluated(result):
    return [e.factors for e in result.history]


def test_reference_loop_replays_the_released_sequence():
    result = search_factors(_toy(2.1, 1.3), 2, strategy="reference", progress=False)
    assert _evaluated(result) == [
        [1.8, 0.0],
        [1.9, 0.0],
        [2.0, 0.0],
        [2.1, 0.0],
        [2.2, 0.0],
        [2.1, 1.0],
        [2.1, 1.1],
        [2.1, 1.2],
        [2.1, 1.3],
        [2.1, 1.4],
    ]
    assert result.factors == [2.1, 1.3] and result.settings["init"] == [1.8, 0.0]


def test_reference_loop_quirks():
    # best carries over: the first r_B trial (1.0) must beat phase 1's best; it does not, and r_B stays 1.0
    harmful_b = search_factors(lambda f: 10.0 - (f[0] - 2.1) ** 2 - f[1] ** 2, 2, strategy="reference", progress=False)
    assert _evaluated(harmful_b)[-1] == [2.1, 1.0] and harmful_b.calls == 6
    assert harmful_b.factors == [2.1, 1.0] and harmful_b.score == 9.0
    assert harmful_b.best.factors == [2.1, 0.0]  # the final factors are not the best evaluated ones
    # increasing only: an optimum below the start is never reached
    below = search_factors(_toy(1.2, 1.0), 2, strategy="reference", progress=False)
    assert _evaluated(below) == [[1.8, 0.0], [1.9, 0.0], [1.8, 1.0], [1.8, 1.1]] and below.factors == [1.8, 1.0]
    # a failed factor <= 1 does not step back: the final model is built with the failed trial
    low = search_factors(
        lambda f: 10.0 - (f[0] - 0.5) ** 2 - f[1] ** 2,
        2,
        strategy="reference",
        reference_init=[0.5, 0.0],
        progress=False,
    )
    assert _evaluated(low) == [[0.5, 0.0], [0.6, 0.0], [0.6, 1.0]] and low.factors == [0.6, 1.0]
    # Method 2 starts the later partition at 1 (then 1.1 when its turn comes)
    method2 = search_factors(_toy(2.0, 1.0), 2, strategy="reference", dpa_method=2, progress=False)
    assert _evaluated(method2)[:3] == [[1.8, 1.0], [1.9, 1.0], [2.0, 1.0]]
    assert _evaluated(method2)[-1] == [2.0, 1.1] and method2.factors == [2.0, 1.0]


@pytest.mark.parametrize("dpa_method", [1, 2])
def test_default_search_finds_a_known_optimum_in_stated_calls(dpa_method):
    assert calls_for_tolerance(0.5, 3.0, 0.05) == 10 and calls_for_tolerance(0.0, 1.2, 0.05) == 8
    result = search_factors(_toy(2.37, 1.43), 2, dpa_method=dpa_method, progress=False)
    assert result.calls == 1 + 2 * 10
    assert abs(result.factors[0] - 2.37) <= 0.05 and abs(result.factors[1] - 1.43) <= 0.05
    assert result.history[0].factors == [1.0, 1.0] and result.history[0].partition is None
    later = 0.0 if dpa_method == 1 else 1.0
    assert all(e.factors[1] == later for e in result.history if e.partition == 0)
    assert result.score == result.best.score and result.settings["at_bound"] == []


def test_default_search_never_worse_than_baseline_and_flags_bounds():
    flat = search_factors(lambda f: -abs(f[0] - 1.0), 1, progress=False)
    assert flat.factors == [1.0]  # nothing in the bracket beats no amplification
    edge = search_factors(lambda f: -((f[0] - 3.6) ** 2), 1, progress=False)
    assert edge.settings["at_bound"] == [0] and edge.factors[0] > 2.95
    capped = search_factors(_toy(2.37, 1.43), 2, max_calls=11, progress=False)
    assert capped.calls == 11 and capped.settings["calls_per_partition"] == 5
    with pytest.raises(ValueError, match="too few"):
        search_factors(_toy(2.0, 1.0), 2, max_calls=4, progress=False)


# objectives and in-place candidates -------------------------------------------------------------------------------


def test_read_texts(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert read_texts(tmp_path / "a.txt") == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"other": 1}\n')
    with pytest.raises(ValueError, match=r"b.jsonl:2 has no 'text' field \(found \['other'\]\)"):
        read_texts(tmp_path / "b.jsonl")


def test_kl_objective_and_amplification_of_a_90_percent_pruned_delta(tmp_path, llama_pair, calibration):
    base, ft = llama_pair
    tokenizer_dir, calib = calibration
    dense = AutoModelForCausalLM.from_pretrained(ft).eval()
    objective = KLObjective(
        dense, AutoTokenizer.from_pretrained(tokenizer_dir), read_texts(calib), continuation_tokens=4, source=str(calib)
    )
    assert objective.describe()["texts"] == 5 and objective.positions > 5 * 4
    assert abs(objective(AutoModelForCausalLM.from_pretrained(ft).eval())) <= 1e-6
    full = prune(base, ft, tmp_path / "full", method="magnitude", rate=0.0, progress=False)[0]
    rebuilt = AmplifiedModel(load_base_model(base, full), full, Partitions([0.0]))
    assert abs(objective(rebuilt.model)) <= 1e-6  # base + dense delta is the fine-tune
    pruned = prune(base, ft, tmp_path / "p90", method="magnitude", rate=0.9, progress=False)[0]
    candidate = AmplifiedModel(load_base_model(base, pruned), pruned, adapter_partitions(pruned))
    kl_pruned = -objective(candidate.apply([1.0]))
    kl_amplified = -objective(candidate.apply([2.0]))
    assert kl_pruned > 1e-3 and kl_amplified < 0.8 * kl_pruned


def test_in_place_candidates_equal_reloading_the_adapter(tmp_path, llama_pair, partitioned):
    base, _ = llama_pair
    partitions = adapter_partitions(partitioned)
    candidate = AmplifiedModel(
        load_base_model(base, partitioned), partitioned, partitions, combine="max", amplify_unpruned=True
    )
    candidate.apply([2.5, 2.5, 2.5])
    in_place = _logits(candidate.apply([1.7, 0.6, 1.2]))  # rewrites from the kept base values, not cumulative
    written, result = amplify(
        partitioned, tmp_path / "fixed", factors=[1.7, 0.6, 1.2], combine="max", amplify_unpruned=True, progress=False
    )
    assert result is None and written.config.amplification["factors"] == [1.7, 1.2, 1.2]
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(written.directory))
    assert torch.allclose(_logits(reloaded), in_place, atol=1e-6)
    assert torch.allclose(_logits(reloaded.merge_and_unload()), in_place, atol=1e-6)


def test_in_place_candidates_match_the_layer_in_bf16(tmp_path):
    base = make_base(tmp_path / "base", dtype=torch.bfloat16)
    ft = make_finetune(base, tmp_path / "ft", steps=2)
    adapter = prune(base, ft, tmp_path / "a", method="magnitude", rate=0.8, partition_rates=[0.9, 0.8], progress=False)[
        0
    ]
    candidate = AmplifiedModel(load_base_model(base, adapter), adapter, adapter_partitions(adapter))
    in_place = _logits(candidate.apply([1.7, 0.6]))  # 1.7 is not a bf16 number: scaling happens in fp32
    written = amplify(adapter, tmp_path / "w", factors=[1.7, 0.6], progress=False)[0]
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(written.directory))
    assert in_place.dtype == torch.bfloat16 and torch.equal(_logits(reloaded), in_place)


def test_tasks_objective_is_a_domain_ratio_against_the_dense_model(tmp_path, llama_pair, calibration):
    """A tiny lm-eval task run on in-memory models (the project's task folders plug in through the TaskManager)."""
    from lm_eval.tasks import TaskManager

    _, ft = llama_pair
    data = tmp_path / "toy.jsonl"
    data.write_text(
        "".join(json.dumps({"q": f"{a}+{a}=", "choices": [str(2 * a), str(a)], "answer": 0}) + "\n" for a in range(4))
    )
    (tmp_path / "toy.yaml").write_text(
        f"task: toy_dev\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {data}\n"
        "validation_split: validation\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n"
    )
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    tokenizer = AutoTokenizer.from_pretrained(calibration[0])
    evaluator = Evaluator(tokenizer, manager, metric="acc", batch_size=8)
    objective = TaskRatioObjective(AutoModelForCausalLM.from_pretrained(ft), evaluator, ["toy_dev"])
    assert objective.dense_scores["toy_dev"] > 0 and objective.describe()["split"] == "dev"
    assert objective(AutoModelForCausalLM.from_pretrained(ft)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no 'f1' metric"):
        Evaluator(tokenizer, manager, metric="f1").scores(AutoModelForCausalLM.from_pretrained(ft), ["toy_dev"])


# API and CLI ------------------------------------------------------------------------------------------------------


def test_dare_plus_dpa_searches_a_reduction(tmp_path, llama_pair, calibration):
    base, ft = llama_pair
    tokenizer_dir, calib = calibration
    adapter, _, result = prune_and_amplify(
        base,
        ft,
        tmp_path / "dare",
        method="dare",
        rate=0.9,
        seed=1,
        calibration=str(calib),
        tokenizer=str(tokenizer_dir),
        continuation_tokens=2,
        progress=False,
    )
    search = adapter.config.amplification["search"]
    assert search["bounds"] == [0.0, 1.2] and search["calls"] == 1 + 8
    assert all(0.0 <= e["factors"][0] <= 1.2 for e in search["history"])
    assert adapter.config.method["name"] == "dare" and result.factors == adapter.config.amplification["factors"]


def test_cli_prune_amplify_end_to_end_loads_with_peft(tmp_path, llama_pair, calibration, capsys):
    base, ft = llama_pair
    tokenizer_dir, calib = calibration
    out = tmp_path / "dpa"
    assert (
        run_prune(
            base,
            ft,
            out,
            amplify=True,
            rate=0.8,
            objective="kl",
            calibration=calib,
            tokenizer=tokenizer_dir,
            continuation_tokens=2,
            combine="max",
            amplify_unpruned=True,
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "default search, DPA method 1, 21 objective calls" in printed and "call  21" in printed
    config = json.loads((out / "adapter_config.json").read_text())
    block = config["amplification"]
    assert block["partition_rates"] == [0.9, 0.8] and block["combine"] == "max"
    search = block["search"]
    assert search["calls"] == len(search["history"]) == 21 and search["objective"]["name"] == "kl"
    assert search["objective"]["split"] == str(calib) and "dppa-peft prune" in config["provenance"]["command"]
    raw = block["raw_factors"]
    assert search["best"]["factors"] == raw and search["final_score"] == search["best"]["score"]
    expected = partition_reference(base, ft, [0.1, 0.2], [max(raw), raw[1]], unpruned=max(raw))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out))
    assert torch.allclose(_logits(model), logits_with(base, expected), atol=1e-5)


def test_cli_amplify_an_existing_adapter_with_the_reference_loop(tmp_path, llama_pair, calibration, capsys):
    base, ft = llama_pair
    tokenizer_dir, calib = calibration
    plain = prune(base, ft, tmp_path / "plain", method="magnitude", rate=0.8, progress=False)[0]
    options = flags(finetuned=ft, calibration=calib, tokenizer=tokenizer_dir, continuation_tokens=2)
    assert main(["amplify", str(plain.directory), *options, *flags(search="reference", dpa_method=2)]) == 0
    assert "reference search, DPA method 2" in capsys.readouterr().out
    written = SparseDeltaAdapter(tmp_path / "plain-dpa")
    block = written.config.amplification
    assert block["search"]["init"] == [1.8, 1.0] and block["search"]["history"][0]["factors"] == [1.8, 1.0]
    raw = block["raw_factors"]
    expected = partition_reference(base, ft, [0.1, 0.2], raw)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(written.directory))
    assert torch.allclose(_logits(model), logits_with(base, expected), atol=1e-5)
    assert run_prune(base, ft, tmp_path / "x", tol=0.1) == 2
    assert "--tol apply only to DPA: add --amplify" in capsys.readouterr().err
    with pytest.raises(ValueError, match="bounds apply to the default search"):
        amplify(plain, tmp_path / "y", search="reference", bounds=[0.5, 2.0], progress=False)


def test_method_dppa_is_dp_then_dpa(tmp_path, llama_pair, calibration):
    if "dp" not in METHODS:
        pytest.skip("the dp method is not registered on this branch yet")
    base, ft = llama_pair
    tokenizer_dir, calib = calibration
    options = dict(calibration=calib, tokenizer=tokenizer_dir, continuation_tokens=2)
    assert run_prune(base, ft, tmp_path / "dppa", method="dppa", rate=0.8, **options) == 0
    config = json.loads((tmp_path / "dppa" / "adapter_config.json").read_text())
    assert config["method"]["name"] == "dp" and config["amplification"]["search"]["calls"] == 21
    assert create_method("dp", 0.8).nested
