"""Learned amplification (search='learned'): it beats factors 1.0 on held-out KL, its factor tables round-trip through
every load path, it is deterministic, it works on any mask, and bad calibration input fails before any work."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dppa_peft import SparseDeltaAdapter, amplify, load_merged, merge_to_folder, prune
from dppa_peft.prune.api import prune_and_amplify
from dppa_peft.amplify.calibration import Prompt, read_prompts
from dppa_peft.amplify.learned import (
    LearnParams,
    Student,
    build_teacher,
    learn_factors,
    mean_kl,
)
from dppa_peft.core.errors import UserError
from dppa_peft.format.encoding import encode
from dppa_peft.methods.base import SparseDelta
from dppa_peft.publish.export import export_supertuning
from tests.cli_args import run_prune
from tests.expected import PROMPT, load_weights
from tests.hub_fixtures import run_python
from tests.tiny_models import VOCAB, char_tokenizer, make_tokenizer

PROMPTS = [f"{a}+{b}={a + b};" for a, b in zip(range(3, 63, 4), range(40, 10, -2))]  # 15 prompts, 3 held out
STEPS = 20
ROWS = 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64)  # output rows of q, k, v, o, gate, up, down in 2 blocks


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("learned_calibration")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return make_tokenizer(root / "tokenizer"), root / "prompts.txt"


@pytest.fixture(scope="module")
def learned(tmp_path_factory, llama_pair, calibration) -> tuple:
    """Magnitude at rate 0.9 plus learned row factors, written by the one-call API."""
    base, ft = llama_pair
    tokenizer, prompts = calibration
    out = tmp_path_factory.mktemp("learned") / "adapter"
    adapter, _, result = prune_and_amplify(
        base,
        ft,
        out,
        method="magnitude",
        rate=0.9,
        search="learned",
        calibration=str(prompts),
        tokenizer=str(tokenizer),
        learn_steps=STEPS,
        continuation_tokens=4,
        progress=False,
    )
    return adapter, result


def _teacher(ft, prompts=PROMPTS):
    return build_teacher(
        AutoModelForCausalLM.from_pretrained(ft),
        char_tokenizer(),
        [Prompt(p, f"p:{i}") for i, p in enumerate(prompts)],
        continuation_tokens=4,
        name=str(ft),
    )


def test_learned_factors_beat_factors_one_on_heldout_kl(learned, llama_pair) -> None:
    adapter, result = learned
    base, ft = llama_pair
    assert result.steps == STEPS and len(result.losses) == STEPS and result.best_step > 0
    assert [s for s, _ in result.heldout] == [0, 10, 20]
    assert result.heldout_kl_after < 0.8 * result.heldout_kl_before
    # the numbers are the stored adapter's: recompute both KLs from the files with the same held-out prompts
    teacher = _teacher(ft)
    assert teacher.settings["heldout_prompts"] == 3 and teacher.settings["top_k"] is None  # vocab 128: full
    plain = prune(base, ft, adapter.directory.parent / "plain", method="magnitude", rate=0.9, progress=False)[0]
    assert mean_kl(load_merged(base, [plain], progress=False), teacher.heldout) == pytest.approx(
        result.heldout_kl_before, rel=1e-5
    )
    assert mean_kl(load_merged(base, [adapter], progress=False), teacher.heldout) == pytest.approx(
        result.heldout_kl_after, rel=1e-5
    )


def test_adapter_stores_factor_tables_and_the_record(learned, calibration) -> None:
    adapter, result = learned
    config = json.loads((adapter.directory / "adapter_config.json").read_text())
    assert config["format_version"] == 2
    records = config["tensors"]
    assert records["model.layers.0.self_attn.q_proj.weight"]["factors"] == [1, 64]
    assert records["model.layers.1.mlp.down_proj.weight"]["factors"] == [1, 64]
    assert "factors" not in records["model.embed_tokens.weight"]  # stored whole, exact: no factor
    assert sum(1 for r in records.values() if r.get("factors")) == 14
    block = config["amplification"]
    assert block["factors"] == [1.0] and block["search"] is None
    learned_block = block["learned"]
    assert learned_block["granularity"] == "row" and learned_block["steps_run"] == STEPS
    assert learned_block["factor_stats"]["count"] == ROWS  # one factor per output row of every pruned matrix
    assert learned_block["heldout_kl_after"] == result.heldout_kl_after
    assert len(learned_block["loss_curve"]) == STEPS
    teacher = learned_block["teachers"][0]
    assert teacher["sources"] == [str(calibration[1])] and teacher["prompts"] == 15 and teacher["heldout_prompts"] == 3
    assert Prompt("x", "demo_math_add_dev[7]").origin == "demo_math_add_dev"
    table = adapter.encoded("model.layers.0.mlp.up_proj.weight").factors
    assert table.dtype == torch.float32 and table.shape == (1, 128) and not torch.equal(table, torch.ones(1, 128))
    card = (adapter.directory / "README.md").read_text()
    assert "learned amplification" in card and "row granularity" in card and "held-out KL" in card


def test_factor_tables_cost_under_one_percent_at_7b_shapes() -> None:
    """[P, R] fp32 tables: 4·R bytes per matrix vs ~3 bytes per kept entry (bf16 value + gap byte) at 10%."""
    generator = torch.Generator().manual_seed(0)
    shape = (1024, 4096)  # a 7B matrix has 4096-11008 columns; the cost falls with columns, not rows
    kept = torch.randperm(shape[0] * shape[1], generator=generator)[: shape[0] * shape[1] // 10].sort().values
    encoded = encode(SparseDelta(kept, torch.randn(kept.numel(), generator=generator), shape), torch.bfloat16)
    with_table = encode(SparseDelta(kept, torch.ones(kept.numel()), shape), torch.bfloat16)
    with_table.factors = torch.ones(1, shape[0])
    cost = (with_table.stored_bytes - encoded.stored_bytes) / encoded.stored_bytes
    assert with_table.stored_bytes - encoded.stored_bytes == 4 * 1024 and cost < 0.01


@pytest.mark.slow
def test_factors_round_trip_through_every_load_path(learned, llama_pair, tmp_path) -> None:
    adapter, _ = learned
    base, _ = llama_pair
    merged = load_merged(base, [adapter], progress=False)
    with torch.no_grad():
        expected = merged(PROMPT).logits
    script = textwrap.dedent(f"""
        import torch, dppa_peft
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(base)!r}),
                                          {str(adapter.directory)!r})
        with torch.no_grad():
            torch.save(model(torch.tensor({PROMPT.tolist()})).logits, {str(tmp_path / "fresh.pt")!r})
    """)
    run_python(script)
    assert torch.equal(torch.load(tmp_path / "fresh.pt"), expected)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter.directory))
    with torch.no_grad():
        assert torch.equal(peft_model.merge_and_unload()(PROMPT).logits, expected)
    merge_to_folder(base, [adapter], tmp_path / "merged", progress=False)
    from_folder = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    export_supertuning(adapter, tmp_path / "export", progress=False)
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "export"))
    with torch.no_grad():
        assert torch.equal(from_folder(PROMPT).logits, expected)
        assert torch.equal(stock.merge_and_unload()(PROMPT).logits, expected)
    assert set(load_weights(tmp_path / "merged")) == set(merged.state_dict())


def test_two_runs_learn_identical_factors(llama_pair, tmp_path) -> None:
    base, ft = llama_pair
    adapter = prune(base, ft, tmp_path / "a", method="magnitude", rate=0.9, progress=False)[0]
    teacher = _teacher(ft)
    runs = [
        learn_factors(
            AutoModelForCausalLM.from_pretrained(base),
            [adapter],
            [teacher],
            LearnParams(learn_steps=6, learn_eval_every=3),
            progress=False,
        )
        for _ in range(2)
    ]
    assert runs[0].losses == runs[1].losses and runs[0].heldout == runs[1].heldout
    assert all(torch.equal(runs[0].factors[0][n], runs[1].factors[0][n]) for n in runs[0].factors[0])


@pytest.mark.parametrize(
    "granularity,shape",
    [("global", (2, 1)), ("block", (2, 1)), ("partition", (2, 1)), ("tensor", (2, 1)), ("row", (2, 64))],
)
def test_granularities_share_factors_as_documented(llama_pair, tmp_path, granularity, shape) -> None:
    base, ft = llama_pair
    adapter = prune(base, ft, tmp_path / "a", method="magnitude", rate=0.8, partition_rates=[0.9, 0.8], progress=False)[
        0
    ]
    student = Student(AutoModelForCausalLM.from_pretrained(base), [adapter], granularity)
    sizes = {"global": 1, "block": 2, "partition": 2, "tensor": 14 * 2, "row": 2 * ROWS}
    assert sum(p.numel() for p in student.parameters) == sizes[granularity]
    with torch.no_grad():
        for i, parameter in enumerate(student.parameters):
            parameter.copy_(torch.arange(parameter.numel(), dtype=torch.float32).reshape(parameter.shape) + 2 + 10 * i)
    tables = student.tables()[0]
    assert tables["model.layers.0.self_attn.q_proj.weight"].shape == shape
    if granularity in ("global", "partition"):  # one table shared by every tensor of the adapter
        first = tables["model.layers.0.self_attn.q_proj.weight"]
        assert first.tolist() == ([[2.0], [2.0]] if granularity == "global" else [[2.0], [3.0]])
        assert all(torch.equal(t, first) for t in tables.values())
    if granularity == "block":  # one factor per block (2 and 12 here), the same for every partition and tensor
        assert [tables[f"model.layers.{b}.mlp.down_proj.weight"].tolist() for b in (0, 1)] == [
            [[2.0], [2.0]],
            [[12.0], [12.0]],
        ]
        assert torch.equal(tables["model.layers.1.self_attn.q_proj.weight"], torch.tensor([[12.0], [12.0]]))


def test_learned_works_on_any_mask_from_the_cli(llama_pair, calibration, tmp_path, capsys) -> None:
    base, ft = llama_pair
    tokenizer, prompts = calibration
    options = dict(calibration=prompts, tokenizer=tokenizer, learn_granularity="tensor", continuation_tokens=2)
    assert (
        run_prune(base, ft, tmp_path / "ties", method="ties", rate=0.9, search="learned", learn_steps=3, **options) == 0
    )
    assert "learned 14 factors (tensor;" in capsys.readouterr().out
    assert SparseDeltaAdapter(tmp_path / "ties").config.tensors["model.layers.0.mlp.up_proj.weight"].factors == (1, 1)
    assert run_prune(base, ft, tmp_path / "no", amplify=True, learn_steps=3) == 2
    assert "apply to search='learned'" in capsys.readouterr().err


def test_bad_calibration_fails_before_any_work(llama_pair, calibration, tmp_path) -> None:
    base, ft = llama_pair
    tokenizer, _ = calibration
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "fields.jsonl").write_text('{"prompt": "1+1="}\n{"prompt": "2+2="}\n')
    (tmp_path / "long.txt").write_text("1+1=\n" + "9" * 130 + "\n")
    cases = [
        ("empty.txt", {}, "empty.txt holds no prompts"),
        ("fields.jsonl", {}, r"fields.jsonl:1 has no 'text' field \(found \['prompt'\]\)"),
        ("long.txt", {}, r"long.txt:2 has 130 tokens, but the model's context of 128 leaves 124 after 4"),
    ]
    for name, extra, message in cases:
        with pytest.raises(UserError, match=message):
            prune_and_amplify(
                base,
                ft,
                tmp_path / "out",
                method="magnitude",
                rate=0.9,
                search="learned",
                calibration=str(tmp_path / name),
                tokenizer=str(tokenizer),
                continuation_tokens=4,
                progress=False,
                **extra,
            )
        assert not (tmp_path / "out").exists()  # nothing was pruned
    assert [p.text for p in read_prompts(tmp_path / "fields.jsonl", text_field="prompt")] == ["1+1=", "2+2="]
    with pytest.raises(UserError, match="needs unlabeled prompts"):
        prune_and_amplify(base, ft, tmp_path / "out", method="magnitude", search="learned", progress=False)


def test_two_adapters_two_teachers_learn_a_merge(llama_pair, llama_finetunes, tmp_path) -> None:
    """N adapters x N teachers: each teacher's prompts teach the summed model; the mean held-out KL drops."""
    base, _ = llama_pair
    adapters = [
        prune(base, ft, tmp_path / f"a{i}", method="magnitude", rate=0.9, progress=False)[0]
        for i, ft in enumerate(llama_finetunes)
    ]
    teachers = [_teacher(ft, PROMPTS[i::2] * 2) for i, ft in enumerate(llama_finetunes)]
    result = learn_factors(
        AutoModelForCausalLM.from_pretrained(base),
        adapters,
        teachers,
        LearnParams(learn_steps=10, learn_eval_every=5),
        progress=False,
    )
    assert len(result.factors) == 2 and all(len(tables) == 14 for tables in result.factors)
    assert result.heldout_kl_after < 0.9 * result.heldout_kl_before
    assert [t["name"] for t in result.teachers] == [str(ft) for ft in llama_finetunes]


def test_given_partition_factors_keep_learned_tables(learned, llama_pair, tmp_path) -> None:
    """DPA factors on a learned adapter multiply its stored row tables (value · 1.5 · row factor)."""
    adapter, _ = learned
    _, ft = llama_pair
    again, result = amplify(adapter, tmp_path / "dpa", finetuned=ft, factors=[1.5], progress=False)
    name = "model.layers.0.mlp.up_proj.weight"
    assert result is None and again.config.factors == [1.5]
    assert torch.equal(again.encoded(name).factors, adapter.encoded(name).factors)
    assert torch.allclose(again.sparse_tensor(name).values, adapter.sparse_tensor(name).values * 1.5, rtol=1e-6, atol=0)


def test_top_k_teacher_cache(llama_pair) -> None:
    """A top-k cache keeps k log-probs and int32 ids per position (+ a rest bucket): 0 for the teacher itself, and
    below the full-vocabulary KL for another model."""
    _, ft = llama_pair
    model = AutoModelForCausalLM.from_pretrained(ft)
    prompts = [Prompt(p, f"p:{i}") for i, p in enumerate(PROMPTS[:4])]
    teacher = build_teacher(model, char_tokenizer(), prompts, continuation_tokens=2, top_k=8)
    batch = teacher.train[0]
    assert teacher.settings["top_k"] == 8 and batch.tokens.dtype == torch.int32 and batch.log_probs.shape[1] == 8
    assert (batch.log_probs.exp().sum(-1) < 1).all()
    assert mean_kl(model, teacher.heldout) == pytest.approx(0.0, abs=1e-6)
    full = build_teacher(model, char_tokenizer(), prompts, continuation_tokens=2)
    other = AutoModelForCausalLM.from_pretrained(llama_pair[0])
    assert 0 < mean_kl(other, teacher.heldout) < mean_kl(other, full.heldout)


def test_dense_rows_and_magnitude_partitions_of_one_adapter_round_trip(llama_pair, calibration, tmp_path) -> None:
    """--learn-dense and --partition-rates on one adapter: [4, R] tables for the pruned matrices, a factor per row
    (token) of the embeddings and lm_head and one per norm vector; PEFT, load_merged and the stock-PEFT export give
    the same logits, and the held-out KL the record reports is the written adapter's."""
    base, ft = llama_pair
    tokenizer, prompts = calibration
    adapter, _, result = prune_and_amplify(
        base,
        ft,
        tmp_path / "a",
        method="magnitude",
        rate=0.9,
        partition_rates=[0.99, 0.97, 0.94, 0.9],
        search="learned",
        learn_dense=True,
        calibration=str(prompts),
        tokenizer=str(tokenizer),
        learn_steps=STEPS,
        continuation_tokens=4,
        progress=False,
    )
    records = adapter.config.tensors
    assert records["model.layers.0.self_attn.q_proj.weight"].factors == (4, 64)
    assert records["model.embed_tokens.weight"].factors == (1, VOCAB)
    assert records["lm_head.weight"].factors == (1, VOCAB)
    assert records["model.norm.weight"].factors == (1, 1)
    learned_block = adapter.config.amplification["learned"]
    assert learned_block["dense"] and learned_block["factor_stats"]["count"] == 4 * ROWS + 2 * VOCAB + 5
    assert result.heldout_kl_after < 0.8 * result.heldout_kl_before
    card = (adapter.directory / "README.md").read_text()
    assert f"{4 * ROWS + 2 * VOCAB + 5} factors (row granularity, 4 partitions, dense tensors' rows too;" in card
    merged = load_merged(base, [adapter], progress=False)
    assert mean_kl(merged, _teacher(ft).heldout) == pytest.approx(result.heldout_kl_after, rel=1e-5)
    export_supertuning(adapter, tmp_path / "export", progress=False)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter.directory))
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "export"))
    with torch.no_grad():
        expected = merged(PROMPT).logits
        assert torch.equal(peft_model(PROMPT).logits, expected)
        assert torch.equal(stock.merge_and_unload()(PROMPT).logits, expected)


def test_learn_dense_needs_row_or_tensor_granularity(llama_pair, calibration, tmp_path, capsys) -> None:
    base, ft = llama_pair
    tokenizer, prompts = calibration
    options = dict(calibration=prompts, tokenizer=tokenizer, search="learned", learn_dense=True)
    assert run_prune(base, ft, tmp_path / "a", method="magnitude", learn_granularity="global", **options) == 2
    assert (
        "use --learn-granularity row or tensor with it, or turn it off (drop --learn-dense; --no-learn-dense with "
        "merge --mode learned, where it is on by default)" in capsys.readouterr().err
    )
    assert not (tmp_path / "a").exists()
