"""The paper's six lm-eval tasks: YAMLs load, tasks build from local fixtures, scoring is right, and the
lm-eval pipeline runs end to end with a tiny random Llama."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dppa_peft.lmeval import tasks as T
from tests.tiny_models import char_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "paper_tasks"
FIXTURE_FILES = {
    "paper_gsm8k": FIXTURES / "gsm8k.jsonl",
    "paper_hendrycks_math": FIXTURES / "hendrycks_math.jsonl",
    "paper_fiqa_sa": FIXTURES / "fiqa_sa.jsonl",
    "paper_fpb": FIXTURES / "fpb.jsonl",
    "paper_scotus": FIXTURES / "scotus.jsonl",
    "paper_unfair_tos": FIXTURES / "unfair_tos.jsonl",
}
HUB_DATASETS = {
    "paper_gsm8k": ("openai/gsm8k", "main"),
    "paper_hendrycks_math": ("DigitalLearningGmbH/MATH-lighteval", None),
    "paper_fiqa_sa": ("AdaptLLM/finance-tasks", "FiQA_SA"),
    "paper_fpb": ("AdaptLLM/finance-tasks", "FPB"),
    "paper_scotus": ("AdaptLLM/law-tasks", "SCOTUS"),
    "paper_unfair_tos": ("AdaptLLM/law-tasks", "UNFAIR_ToS"),
}
EXPECTED_TARGETS = {
    "paper_gsm8k": ["12", "1234", "90"],
    "paper_hendrycks_math": ["\\frac{1}{2}", "4", "3\\sqrt{2}"],
    "paper_fiqa_sa": ["positive", "negative", "neutral"],
    "paper_fpb": ["positive", "negative", "neutral"],
    "paper_scotus": ["Judicial Power", "First Amendment"],
    "paper_unfair_tos": ["Unilateral termination", "Unilateral change | Content removal", "Other"],
}


def rows(task: str) -> list[dict[str, Any]]:
    """The fixture rows of ``task``."""
    return [json.loads(line) for line in FIXTURE_FILES[task].read_text().splitlines()]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the datasets cache of the local JSON loads inside the test's tmp folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")


@pytest.fixture(scope="module")
def manager():
    return T.task_manager()


@pytest.fixture(scope="module")
def utils() -> ModuleType:
    """``eval_tasks/paper/utils.py``, imported by path as lm-eval does."""
    spec = importlib.util.spec_from_file_location("paper_task_utils", T.tasks_root() / "paper" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------- task folders


def test_every_paper_yaml_is_indexed(manager) -> None:
    paper_dir = T.tasks_root() / "paper"
    indexed = {Path(e.yaml_path) for e in manager.task_index.values() if e.yaml_path}
    assert set(paper_dir.glob("*.yaml")) <= indexed  # lm-eval silently skips YAMLs it cannot parse
    tasks = {t for pair in T.PAPER_DOMAINS.values() for t in pair}
    assert tasks <= set(manager.all_subtasks)
    assert set(T.PAPER_GROUPS.values()) <= set(manager.all_groups)


def test_tasks_root_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "alpha").mkdir()
    (tmp_path / "__pycache__").mkdir()
    monkeypatch.setenv(T.TASKS_ENV_VAR, str(tmp_path))
    assert T.tasks_root() == tmp_path
    assert T.task_dirs() == [tmp_path / "alpha"]
    monkeypatch.setenv(T.TASKS_ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=T.TASKS_ENV_VAR):
        T.tasks_root()


def test_default_root_is_the_repository_task_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a checkout, the tasks are the repository's ``eval_tasks/`` (the wheel ships it as ``dppa_peft.eval_tasks``,
    found from an installed wheel in ``tests/test_wheel.py``)."""
    monkeypatch.delenv(T.TASKS_ENV_VAR, raising=False)
    assert T.tasks_root() == Path(T.__file__).resolve().parents[2] / "eval_tasks"
    assert T.tasks_root() / "paper" in T.task_dirs()


@pytest.mark.parametrize("task", sorted(HUB_DATASETS))
def test_hub_config_and_generation_settings(manager, task: str) -> None:
    config = T.task_config(task, manager)
    assert (config["dataset_path"], config.get("dataset_name")) == HUB_DATASETS[task]
    assert config["output_type"] == "generate_until" and config["num_fewshot"] == 0
    gen = config["generation_kwargs"]
    assert gen["do_sample"] is False and gen["temperature"] == 0 and gen["max_gen_toks"] == 512
    assert gen["until"]


@pytest.mark.parametrize("task", sorted(FIXTURE_FILES))
def test_task_builds_from_local_fixture(manager, task: str) -> None:
    config = T.local_task_config(task, FIXTURE_FILES[task], manager)
    assert config["dataset_path"] == "json" and Path(config["dataset_kwargs"]["data_files"]["test"]).is_absolute()
    built = manager.load([config])["tasks"][task]
    docs = list(built.test_docs())
    assert docs == rows(task)
    assert [built.doc_to_target(d) for d in docs] == EXPECTED_TARGETS[task]
    assert all(built.doc_to_text(d).strip() for d in docs)


def test_local_task_config_errors(manager) -> None:
    with pytest.raises(FileNotFoundError, match="paper_fpb"):
        T.local_task_config("paper_fpb", FIXTURES / "nope.jsonl", manager)
    with pytest.raises(KeyError, match="no task or group named 'nope'"):
        T.task_config("nope", manager)
    with pytest.raises(ValueError, match="is a group"):
        T.task_config("paper_law", manager)


def test_groups_build_from_local_overrides(tmp_path: Path) -> None:
    folder = T.write_local_tasks(FIXTURE_FILES, tmp_path / "local")
    manager = T.task_manager(extra_paths=[folder])
    loaded = manager.load(sorted(T.PAPER_GROUPS.values()))
    assert loaded["group_map"] == {T.PAPER_GROUPS[d]: list(pair) for d, pair in T.PAPER_DOMAINS.items()}
    assert {name: len(list(t.test_docs())) for name, t in loaded["tasks"].items()} == {
        name: len(rows(name)) for name in FIXTURE_FILES
    }


# ---------------------------------------------------------------------------------------------- prompts


def test_prompts(utils) -> None:
    assert utils.gsm8k_prompt({"question": "Q?"}) == "Question:\nQ?\nAnswer:\nLet's think step by step.\n"
    assert utils.math_prompt({"problem": "P?"}).startswith("Question:\nP?\nAnswer:")
    doc = {"input": "Text.\nWhich area?\nAnswer:  ", "options": ["Privacy", "Unions"]}
    assert utils.choices_prompt(doc) == "Text.\nWhich area?\nOptions:\n- Privacy\n- Unions\nAnswer:"
    assert utils.choices_prompt({**doc, "input": "Text."}) == "Text.\nOptions:\n- Privacy\n- Unions\nAnswer:"


# ------------------------------------------------------------------------------------------- maths scoring


@pytest.mark.parametrize(
    ("generation", "answer"),
    [
        ("So 1000 + 234 = 1234.\nThe answer is 1,234.", "1,234."),
        ("[Final solution] Thus she makes $18. #### 18", "18"),
        ("#### -$38,000\nThe answer is 5", "-$38,000"),
        ("Adding gives $\\boxed{\\frac{1}{2}}$ in total.", "\\frac{1}{2}"),
        ("We get 3 and then 7, finally 12,", "12"),
        ("7 apples.\nQuestion: next one has 99", "7"),
        ("no digits at all", None),
    ],
)
def test_extract_answer(utils, generation: str, answer: str | None) -> None:
    assert utils.extract_answer(generation) == answer


@pytest.mark.parametrize(
    ("prediction", "reference", "equal"),
    [
        ("1,234.", "1234", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("\\dfrac12", "\\frac{1}{2}", True),
        ("$18.00", "18", True),
        ("18 dollars", "18", True),
        ("5\\text{ cm}", "5", True),
        ("x = 4", "4", True),
        ("50\\%", "50", True),
        ("90^\\circ", "90", True),
        ("3\\sqrt2", "3\\sqrt{2}", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
        ("\\text{(C)}", "(C)", True),
        ("-$38,000", "70000", False),
        ("2x", "2", False),
        ("\\frac{1}{3}", "0.33", False),
        (None, "1", False),
    ],
)
def test_is_equiv(utils, prediction: str | None, reference: str, equal: bool) -> None:
    assert utils.is_equiv(prediction, reference) is equal


def test_math_gold_and_process(utils) -> None:
    doc = rows("paper_hendrycks_math")[0]
    assert utils.math_gold(doc) == "\\frac{1}{2}"
    assert utils.process_math(doc, ["It is 0.5. The answer is 0.5"]) == {"acc": 1.0}
    assert utils.process_math(doc, ["The answer is \\boxed{1/3}"]) == {"acc": 0.0}
    assert utils.last_boxed("\\boxed{\\frac{a}{b}} then \\fbox{x{y}}") == "x{y}"
    with pytest.raises(ValueError, match="boxed"):
        utils.math_gold({"solution": "no box here"})
    gsm = rows("paper_gsm8k")[1]
    assert utils.process_gsm8k(gsm, ["1200 + 34 = 1,234 pens. The answer is 1,234."]) == {"acc": 1.0}
    assert utils.process_gsm8k(gsm, ["The answer is 1,200."]) == {"acc": 0.0}


# ------------------------------------------------------------------------------------------ choice scoring


@pytest.mark.parametrize(
    ("generation", "choice", "contained"),
    [
        (" positive", "positive", True),
        ("The sentiment is POSITIVE.", "positive", True),
        ("it is\n  Civil   rights related", "Civil Rights", True),
        (" negative", "positive", False),
        ("Civil", "Civil Rights", False),
    ],
)
def test_contains_choice(utils, generation: str, choice: str, contained: bool) -> None:
    assert utils.contains_choice(generation, choice) is contained


def test_process_choice(utils) -> None:
    fpb = rows("paper_fpb")[0]  # gold: positive
    assert utils.process_choice(fpb, [" Positive"]) == {"acc": 1.0, "acc_strict": 1.0}
    assert utils.process_choice(fpb, [" negative, neutral or positive"]) == {"acc": 1.0, "acc_strict": 0.0}
    assert utils.process_choice(fpb, [" neutral"]) == {"acc": 0.0, "acc_strict": 0.0}
    unfair = rows("paper_unfair_tos")[1]  # multi-label gold: Unilateral change, Content removal
    assert utils.gold_choices(unfair) == ["Unilateral change", "Content removal"]
    assert utils.process_choice(unfair, ["Content removal"]) == {"acc": 1.0, "acc_strict": 1.0}
    assert utils.process_choice(unfair, ["Arbitration"]) == {"acc": 0.0, "acc_strict": 0.0}
    with pytest.raises(ValueError, match="empty gold_index"):
        utils.gold_choices({**unfair, "gold_index": []})


# ------------------------------------------------------------------------------------ lm-eval end to end


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    """A randomly initialised one-layer Llama with hidden size 32."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, pad_token_id=3, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def lm():
    from lm_eval.models.huggingface import HFLM

    tokenizer = char_tokenizer()
    return HFLM(pretrained=tiny_llama(len(tokenizer)), tokenizer=tokenizer, batch_size=1)


def evaluate(lm, manager, configs: list[dict[str, Any]]) -> dict[str, Any]:
    """``simple_evaluate`` on two docs per task, short generations, with the samples logged."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model=lm, tasks=configs, task_manager=manager, limit=2, log_samples=True, gen_kwargs={"max_gen_toks": 16}
    )


def test_simple_evaluate_matches_scoring_functions(lm, manager, utils) -> None:
    configs = [T.local_task_config(t, FIXTURE_FILES[t], manager) for t in ("paper_gsm8k", "paper_unfair_tos")]
    out = evaluate(lm, manager, configs)
    process = {"paper_gsm8k": utils.process_gsm8k, "paper_unfair_tos": utils.process_choice}
    for task, fn in process.items():
        samples = out["samples"][task]
        assert [s["doc_id"] for s in samples] == [0, 1]
        assert out["results"][task]["sample_len"] == 2
        expected = [fn(s["doc"], [s["filtered_resps"][0]]) for s in samples]
        for sample, metrics in zip(samples, expected, strict=True):
            assert {name: sample[name] for name in metrics} == metrics
        for name in expected[0]:
            mean = sum(m[name] for m in expected) / len(expected)
            assert out["results"][task][f"{name},none"] == pytest.approx(mean)


def test_simple_evaluate_counts_a_contained_choice(lm, manager, tmp_path: Path) -> None:
    first = evaluate(lm, manager, [T.local_task_config("paper_fpb", FIXTURE_FILES["paper_fpb"], manager)])
    generation = first["samples"]["paper_fpb"][0]["filtered_resps"][0]
    fragment = generation.strip()[:3]
    assert fragment, f"the tiny model generated only whitespace: {generation!r}"
    # the FPB prompt is the AdaptLLM input alone, so new options leave the generation unchanged
    row = {**rows("paper_fpb")[0], "options": ["~never~", fragment], "gold_index": 1}
    data = tmp_path / "fpb_contained.jsonl"
    data.write_text(json.dumps(row) + "\n")
    second = evaluate(lm, manager, [T.local_task_config("paper_fpb", data, manager)])
    sample = second["samples"]["paper_fpb"][0]
    assert sample["filtered_resps"][0] == generation
    assert (sample["acc"], sample["acc_strict"]) == (1.0, 1.0)
    assert second["results"]["paper_fpb"]["acc,none"] == 1.0
