"""The offline demo zoo: synthetic data, tokenizer, cached zoo builds and the synthetic lm-eval tasks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dppa_peft.demo.calibration import calibration_prompts
from dppa_peft.demo.domains import DOMAINS, SPLIT_SIZES, TASKS, generic_stream, task_split
from dppa_peft.demo.scoring import choice_correct, extract_number, numeric_correct
from dppa_peft.demo.tasks import SYNTHETIC_TASKS_DIR, domain_task_names, group_name, task_name
from dppa_peft.demo.tokenizer import build_tokenizer
from dppa_peft.demo.train import Schedule
from dppa_peft.demo import zoo as zoo_module
from dppa_peft.demo.zoo import SIZES, Zoo, build_zoo, cached_zoo


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return build_zoo(tmp_path_factory.mktemp("zoo-cache"), seed=0, size="tiny", progress=False)


@pytest.fixture()
def micro_size(monkeypatch: pytest.MonkeyPatch) -> str:
    """A "tiny" zoo with a few steps per run, for tests that only compare builds."""
    tiny = SIZES["tiny"]
    monkeypatch.setitem(
        SIZES,
        "tiny",
        dataclasses.replace(
            tiny,
            pretrain=Schedule(6, 8, 3e-3, warmup=2),
            light=Schedule(3, 8, 1e-3, warmup=1),
            heavy=Schedule(4, 8, 3e-3, warmup=1),
        ),
    )
    return "tiny"


def tensors_digest(folder: Path) -> str:
    tensors = load_file(folder / "model.safetensors")
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].numpy().tobytes())
    return digest.hexdigest()


def zoo_digest(zoo: Zoo) -> str:
    return hashlib.sha256("".join(tensors_digest(f) for f in [zoo.base, *zoo.finetunes.values()]).encode()).hexdigest()


# --- synthetic data, scoring, tokenizer ---------------------------------------------------------------------------


def test_splits_are_deterministic_disjoint_and_balanced() -> None:
    for task, spec in TASKS.items():
        splits = {split: task_split(task, split) for split in ("train", "dev", "test")}
        assert {s: len(e) for s, e in splits.items()} == SPLIT_SIZES
        assert all(e.prompt.endswith("Answer:") for e in splits["test"])
        test, dev = {e.prompt for e in splits["test"]}, {e.prompt for e in splits["dev"]}
        assert len(test) == len(splits["test"]) and len(dev) == len(splits["dev"])
        assert not test & dev and not (test | dev) & {e.prompt for e in splits["train"]}
        if spec.choices:
            counts = [sum(e.answer == c for e in splits["test"]) for c in spec.choices]
            assert max(counts) - min(counts) <= 1
        other_seed = task_split(task, "test", seed=7)
        assert [e.prompt for e in other_seed] != [e.prompt for e in splits["test"]]
    assert sorted(DOMAINS) == ["finance", "law", "math"] and all(len(t) == 2 for t in DOMAINS.values())


def test_calibration_prompts_are_new_distinct_and_deterministic() -> None:
    for task in TASKS:
        prompts = calibration_prompts(task, 150)
        scored = {e.prompt for split in ("dev", "test") for e in task_split(task, split)}
        assert len(set(prompts)) == 150 and not set(prompts) & scored
        assert all(p.endswith("Answer:") for p in prompts)
        assert calibration_prompts(task, 150) == prompts and calibration_prompts(task, 20) == prompts[:20]
    assert calibration_prompts("math_add", 2) == (
        "Question: Grace had 8 oranges. Paul gave Grace 12 oranges. How many oranges does Grace have? Answer:",
        "Question: Emma had 10 coins. Henry gave Emma 11 coins. How many coins does Emma have? Answer:",
    )


def test_scoring_rules() -> None:
    assert extract_number(" 1,234 apples") == 1234 and extract_number("none") is None
    assert numeric_correct("42.", "42") and not numeric_correct("4 2", "42") and not numeric_correct("", "7")
    choices = ("positive", "negative", "neutral")
    assert choice_correct("Positive", "positive", choices)
    assert not choice_correct("positive or negative", "positive", choices)  # naming every choice scores nothing
    assert not choice_correct("positively", "positive", choices)


def test_tokenizer_round_trips_every_text_without_unknown_tokens() -> None:
    tok = build_tokenizer()
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    stream = generic_stream(0)
    texts = [next(stream) for _ in range(300)]
    texts += [f"{e.prompt} {e.answer}" for task in TASKS for e in task_split(task, "test")]
    for text in texts:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(tok.encode("Answer: 105", add_special_tokens=False)) == [
        "▁Answer",
        ":",
        "▁",
        "1",
        "0",
        "5",
    ]


# --- the zoo ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_zoo_folders_are_standard_hf_models(tiny_zoo: Zoo) -> None:
    assert tiny_zoo.domains == ("math", "finance", "law") and tiny_zoo.heavy == "math"
    assert tiny_zoo.tasks() == domain_task_names("test")
    assert tiny_zoo.groups("dev") == {"math": "demo_math_dev", "finance": "demo_finance_dev", "law": "demo_law_dev"}
    for folder in [tiny_zoo.base, *tiny_zoo.finetunes.values()]:
        for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
            assert (folder / name).is_file(), folder / name
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is False
        tok = AutoTokenizer.from_pretrained(folder)
        assert len(tok) == config["vocab_size"] and tok.pad_token_id is not None
    assert Zoo.load(tiny_zoo.root) == tiny_zoo


@pytest.mark.slow
def test_heavy_finetune_has_the_largest_delta(tiny_zoo: Zoo) -> None:
    heavy = tiny_zoo.delta_stats["math"]
    for light in (tiny_zoo.delta_stats["finance"], tiny_zoo.delta_stats["law"]):
        assert heavy.relative > light.relative
        assert heavy.max_relative > 3 * light.max_relative and heavy.max_relative > 3  # max|δ| > 3 mean|W_B|
        assert heavy.large_fraction > 10 * light.large_fraction


@pytest.mark.slow
def test_cached_zoo_is_reused_and_incomplete_builds_are_not(
    tiny_zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tiny_zoo.root.parent
    manifest_time = (tiny_zoo.root / "manifest.json").stat().st_mtime_ns
    with monkeypatch.context() as patched:  # a cached zoo is loaded, never trained again
        patched.setattr(zoo_module, "_build", lambda *args, **kwargs: pytest.fail("the cached zoo was rebuilt"))
        assert build_zoo(cache, seed=0, size="tiny", progress=False) == tiny_zoo
    assert (tiny_zoo.root / "manifest.json").stat().st_mtime_ns == manifest_time
    assert cached_zoo(cache, seed=1, size="tiny") is None

    broken = tmp_path / "cache"
    shutil.copytree(tiny_zoo.root, broken / tiny_zoo.root.name)
    assert cached_zoo(broken, seed=0, size="tiny") is not None
    (broken / tiny_zoo.root.name / "law" / "model.safetensors").unlink()
    assert cached_zoo(broken, seed=0, size="tiny") is None


def test_builds_are_deterministic_per_seed(micro_size: str, tmp_path: Path) -> None:
    first = build_zoo(tmp_path / "a", seed=3, size=micro_size, progress=False)
    again = build_zoo(tmp_path / "b", seed=3, size=micro_size, progress=False)
    other = build_zoo(tmp_path / "c", seed=4, size=micro_size, progress=False)
    assert zoo_digest(first) == zoo_digest(again)
    assert tensors_digest(first.base) != tensors_digest(other.base)
    assert all(tensors_digest(first.finetunes[d]) != tensors_digest(other.finetunes[d]) for d in DOMAINS)
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temporary folder left


# --- the synthetic lm-eval tasks ----------------------------------------------------------------------------------


@pytest.fixture()
def task_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)  # the tasks must not depend on the current directory
    return TaskManager(include_path=str(SYNTHETIC_TASKS_DIR), include_defaults=False)


def test_tasks_and_groups_load_from_another_directory(task_manager) -> None:
    names = [task_name(t, split) for t in TASKS for split in ("test", "dev")]
    groups = [group_name(d, split) for d in DOMAINS for split in ("test", "dev")]
    assert set(names + groups) <= set(task_manager.all_tasks)
    loaded = task_manager.load([group_name("law", "dev"), task_name("math_add")])
    tasks = loaded["tasks"]
    assert set(tasks) == {"demo_law_clause_dev", "demo_law_verdict_dev", "demo_math_add"}
    assert loaded["group_map"]["demo_law_dev"] == ["demo_law_clause_dev", "demo_law_verdict_dev"]
    assert len(tasks["demo_law_clause_dev"].eval_docs) == SPLIT_SIZES["dev"]
    math_docs = list(tasks["demo_math_add"].eval_docs)
    assert len(math_docs) == SPLIT_SIZES["test"]
    assert math_docs[0] == task_split("math_add", "test")[0].as_record()


@pytest.mark.slow
def test_finetunes_beat_the_base_in_lm_eval(tiny_zoo: Zoo, task_manager) -> None:
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    scores, loglikelihoods = {}, {}
    positive = [e for e in task_split("finance_sentiment", "test") if e.answer == "positive"][:8]
    for name, folder in (("base", tiny_zoo.base), ("finance", tiny_zoo.finetunes["finance"])):
        lm = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(folder), tokenizer=tok, batch_size=64, device="cpu")
        results = lm_eval.simple_evaluate(
            model=lm, tasks=["demo_finance"], task_manager=task_manager, limit=50, verbosity="ERROR"
        )["results"]
        scores[name] = {task: results[task]["acc,none"] for task in domain_task_names()["finance"]}
        requests = [
            Instance("loglikelihood", {}, (e.prompt, f" {label}"), i)
            for i, e in enumerate(positive)
            for label in ("positive", "negative")
        ]
        values = [logprob for logprob, _ in lm.loglikelihood(requests)]
        loglikelihoods[name] = sum(values[0::2]) - sum(values[1::2])  # correct minus wrong label
        assert len(lm.tokenizer) == lm.model.config.vocab_size  # lm-eval added no token
    for task in domain_task_names()["finance"]:
        assert scores["base"][task] <= 0.1
        assert scores["finance"][task] >= scores["base"][task] + 0.4, scores
    assert loglikelihoods["finance"] > loglikelihoods["base"] and loglikelihoods["finance"] > 0
