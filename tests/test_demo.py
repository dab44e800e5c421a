"""The offline demo and the evaluation entry points, on the tiny demo zoo (built once per test worker)."""

import json
import math
from pathlib import Path

import pytest

from dppa_peft import merge_to_folder, prune
from dppa_peft.cli import main
from dppa_peft.demo.domains import DOMAINS, task_split
from dppa_peft.demo.runner import DemoSettings, run_demo, summary
from dppa_peft.demo.zoo import build_zoo
from tests.cli_args import flags
from tests.hub_fixtures import REPO_ROOT, run_python

pytestmark = pytest.mark.slow  # the demo zoo and lm-eval runs

SYNTHETIC = str(REPO_ROOT / "eval_tasks" / "synthetic")


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="module")
def zoo(zoo_cache):
    return build_zoo(zoo_cache, size="tiny", progress=False)


def test_reduced_demo_writes_the_paper_tables(tmp_path, zoo, zoo_cache):
    settings = DemoSettings(
        size="tiny",
        rates=(0.9,),
        prunes=("magnitude", "dare", "dppa", "magnitude+learned"),
        merges=("dppa (sum)", "magnitude+learned (learned)", "magnitude (adamerging task)"),
        objective="kl",
        limit=20,
        learn_steps=4,
    )
    run = run_demo(tmp_path / "demo", zoo_cache, settings, progress=False)
    report = tmp_path / "demo" / "report"
    assert sorted(p.name for p in report.iterdir()) == [
        "demo.json",
        "domain_ratio_vs_rate.png",
        "merge_math-finance-law.png",
        "report.json",
        "report.md",
    ]
    data = json.loads((report / "report.json").read_text())
    assert len(data["variants"]) == 3 * 4 + 3  # 3 domains x 4 prune variants at one rate, and three merges
    assert [v["method"] for v in data["variants"][:4]] == ["magnitude", "dare", "dppa", "magnitude+learned"]
    assert [v["method"] for v in data["variants"][12:]] == list(settings.merges)
    for ratio in data["ratios"]:  # Domain-Ratio = geometric mean of the Task-Ratios of the raw scores
        variant = next(
            v
            for v in data["variants"]
            if v["method"] == ratio["method"] and v["kind"] == ratio["kind"] and ratio["domain"] in v["domains"]
        )
        dense = data["dense"][ratio["domain"]]
        if 0.0 in dense.values():  # undefined Task-Ratio: the tiny zoo may score 0 on a task
            assert ratio["domain_ratio"] is None
            continue
        task_ratios = [variant["scores"][t] / dense[t] for t in dense]
        assert ratio["domain_ratio"] == pytest.approx(math.prod(task_ratios) ** (1 / len(task_ratios)))
    adapters = tmp_path / "demo" / "adapters" / "math"
    dppa = json.loads((adapters / "dppa-90" / "adapter_config.json").read_text())
    search = dppa["amplification"]["search"]
    assert search["objective"]["name"] == "kl" and search["objective"]["split"].endswith("math_dev.jsonl")
    assert len(search["history"]) == search["calls"] > 1
    learned = json.loads((adapters / "magnitude+learned-90" / "adapter_config.json").read_text())
    assert learned["amplification"]["learned"]["steps_run"] == 4
    [source] = learned["amplification"]["learned"]["teachers"][0]["sources"]
    assert source.endswith("math_dev.jsonl")
    calibration = [json.loads(line)["text"] for line in Path(source).read_text().splitlines()]
    dev = [e.prompt for t in DOMAINS["math"] for e in task_split(t, "dev")]  # per task: its 50 dev prompts, then new
    assert len(set(calibration)) == 400 and calibration[:50] == dev[:50] and calibration[200:250] == dev[50:]
    assert not set(calibration[50:200] + calibration[250:]) & {
        e.prompt for t in DOMAINS["math"] for split in ("dev", "test") for e in task_split(t, split)
    }
    merges = tmp_path / "demo" / "merges"
    assert sorted(p.name for p in merges.iterdir()) == ["magnitude+learned-learned-90", "magnitude-adamerging-task-90"]
    record = json.loads((merges / "magnitude+learned-learned-90" / "adapter_config.json").read_text())["merge"]
    assert record["mode"] == "learned" and [
        Path(s).name for t in record["learned"]["teachers"] for s in t["sources"]
    ] == ["math_dev.jsonl", "finance_dev.jsonl", "law_dev.jsonl"]
    text = summary(run)
    assert "Pruning: Domain-Ratio (%)" in text and "Merging math + finance + law" in text


def test_lm_eval_cli_model_and_stock_hf_on_the_merged_export_agree(tmp_path, zoo):
    adapter, _ = prune(zoo.base, zoo.finetunes["finance"], tmp_path / "a", method="magnitude", rate=0.9, progress=False)
    merged = merge_to_folder(zoo.base, [adapter.directory], tmp_path / "merged", progress=False)
    common = [
        "--tasks",
        "demo_finance_sentiment",
        "--include_path",
        SYNTHETIC,
        "--device",
        "cpu",
        "--limit",
        "20",
        "--batch_size",
        "8",
    ]
    plugin = run_python(
        "import sys; from dppa_peft.evaluation.lm_model import cli\n"
        f"sys.argv = ['dppa-lm-eval', '--model', 'dppa', '--model_args', "
        f"'pretrained={zoo.base},adapters={adapter.directory}', '--output_path', '{tmp_path / 'plugin'}', "
        f"*{common!r}]\ncli()"
    )
    stock = run_python(
        "import sys; from lm_eval.__main__ import cli_evaluate\n"
        f"sys.argv = ['lm_eval', '--model', 'hf', '--model_args', 'pretrained={merged}', "
        f"'--output_path', '{tmp_path / 'stock'}', *{common!r}]\ncli_evaluate()"
    )
    scores = []
    for folder in ("plugin", "stock"):
        [result] = list((tmp_path / folder).rglob("results_*.json"))
        scores.append(json.loads(result.read_text())["results"]["demo_finance_sentiment"]["acc,none"])
    assert scores[0] == scores[1]
    assert "demo_finance_sentiment" in plugin.stdout and "demo_finance_sentiment" in stock.stdout


def test_eval_command_writes_a_report(tmp_path, zoo, capsys):
    adapter, _ = prune(zoo.base, zoo.finetunes["law"], tmp_path / "a", method="magnitude", rate=0.8, progress=False)
    inputs = dict(base=zoo.base, domain=f"law={zoo.finetunes['law']}")
    tasks = "law=demo_law_clause,demo_law_verdict"
    report = flags(**inputs, tasks=tasks, adapter=f"law={adapter.directory}", limit=10, out=tmp_path / "report")
    assert main(["eval", *report]) == 0
    assert "1 variants" in capsys.readouterr().out
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "magnitude" in json.dumps(data)
    wrong = f"math={adapter.directory}"
    assert main(["eval", *flags(**inputs, tasks="law=demo_law_clause", adapter=wrong, out=tmp_path / "r2")]) == 2
    assert "unknown domain(s) ['math']" in capsys.readouterr().err
