"""lm-eval integration through the real library: the ``dppa`` model (HFLM + sparse adapters merged at load, or
unmerged through PEFT), lm-eval's own ``--model hf ... peft=`` under ``dppa-lm-eval``, devices and device maps, and
``dppa-peft eval``'s backends (hf, and vLLM's wiring without vLLM installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from dppa_peft import load_merged, merge_to_folder, prune
from dppa_peft.cli import main
from dppa_peft.evaluation import backends
from dppa_peft.eval_tasks import TASKS_DIR
from dppa_peft.evaluation.lm_model import DppaLM, with_dppa_model, with_package_tasks
from dppa_peft.lmeval.tasks import resolve_tasks
from tests.tiny_models import make_base, make_finetune, make_tokenizer

TASK = "demo_finance_sentiment"
TOKENS = torch.tensor([[5, 17, 42, 99, 3, 64, 7, 21]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama base with a tokenizer, a fine-tune and a magnitude-90% adapter of it."""
    root = tmp_path_factory.mktemp("lm_eval_models")
    base = make_tokenizer(make_base(root / "base"))
    finetuned = make_finetune(base, root / "ft", steps=5)
    adapter, _ = prune(base, finetuned, root / "adapter", method="magnitude", rate=0.9, progress=False)
    return {"base": base, "ft": finetuned, "adapter": adapter.directory, "root": root}


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.fixture(scope="module")
def merged_logits(tiny: dict[str, Path]) -> torch.Tensor:
    return _logits(load_merged(tiny["base"], [tiny["adapter"]], progress=False))


def test_dppa_model_merges_adapters_and_peft_argument_at_load(tiny, merged_logits):
    for args in ({"adapters": str(tiny["adapter"])}, {"peft": str(tiny["adapter"])}):
        lm = DppaLM(pretrained=str(tiny["base"]), device="cpu", batch_size=1, **args)
        assert type(lm.model).__name__ == "LlamaForCausalLM"  # merged into the weights: no PEFT layers left
        assert torch.equal(_logits(lm.model), merged_logits)


def test_dppa_model_attaches_unmerged_on_request(tiny, merged_logits):
    from peft import PeftModel

    lm = DppaLM(pretrained=str(tiny["base"]), peft=str(tiny["adapter"]), merge_adapter="False", device="cpu")
    assert isinstance(lm.model, PeftModel)
    torch.testing.assert_close(_logits(lm.model), merged_logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="need merge_adapter=True"):
        DppaLM(pretrained=str(tiny["base"]), adapters=str(tiny["adapter"]), weights="0.5", merge_adapter=False)


def test_dppa_model_honours_device_and_accelerate_device_maps(tiny, merged_logits, monkeypatch, tmp_path):
    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    lm = DppaLM(
        pretrained=str(tiny["base"]),
        adapters=str(tiny["adapter"]),
        parallelize=True,
        max_cpu_memory="1GB",
        device="cpu",
        offload_folder=str(tmp_path / "offload"),
    )
    assert (seen[-1]["device_map"], seen[-1]["max_memory"]) == ("auto", {"cpu": 10**9})  # accelerate's loading
    assert lm.device == torch.device("cpu") and torch.equal(_logits(lm.model), merged_logits)
    with pytest.raises(ValueError, match="offloaded by the device map"):  # no room in memory: all on disk
        DppaLM(
            pretrained=str(tiny["base"]),
            adapters=str(tiny["adapter"]),
            parallelize=True,
            device="cpu",
            offload_folder=str(tmp_path / "offload2"),
        )
    if not torch.cuda.is_available():  # the device reaches transformers instead of being dropped
        with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
            DppaLM(pretrained=str(tiny["base"]), adapters=str(tiny["adapter"]), device="cuda")


def test_with_dppa_model_serves_lm_eval_hf_names():
    assert with_dppa_model(["--model", "hf", "--tasks", "x"]) == ["--model", "dppa", "--tasks", "x"]
    assert with_dppa_model(["run", "--model=huggingface"]) == ["run", "--model=dppa"]
    assert with_dppa_model(["--model", "vllm"]) == ["--model", "vllm"]
    assert with_package_tasks(["--tasks", "x"]) == ["--tasks", "x", "--include_path", str(TASKS_DIR)]
    assert with_package_tasks(["--include_path=/t"]) == ["--include_path=/t"]


@pytest.mark.slow
def test_lm_eval_hf_with_peft_sparse_delta_equals_stock_hf_on_the_merged_model(tiny, tmp_path, monkeypatch):
    from lm_eval import simple_evaluate

    from dppa_peft.evaluation.lm_model import cli
    from dppa_peft.lmeval.tasks import task_manager

    merged = merge_to_folder(tiny["base"], [tiny["adapter"]], tmp_path / "merged", progress=False)
    monkeypatch.setattr(
        "sys.argv",
        [
            "dppa-lm-eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={tiny['base']},peft={tiny['adapter']}",
            "--tasks",
            TASK,
            "--device",
            "cpu",
            "--limit",
            "8",  # the package's tasks are included by dppa-lm-eval
            "--output_path",
            str(tmp_path / "out"),
        ],
    )
    cli()  # lm-eval's own command line, in this process
    [result] = list((tmp_path / "out").rglob("results_*.json"))
    got = json.loads(result.read_text())["results"][TASK]
    stock = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(merged), "device": "cpu"},
        tasks=[TASK],
        task_manager=task_manager(),
        limit=8,
        log_samples=False,
    )["results"][TASK]
    assert got["acc,none"] == stock["acc,none"] and got["acc_stderr,none"] == stock["acc_stderr,none"]


@pytest.mark.slow
def test_builtin_tasks_resolve_without_downloading_and_typos_are_clear():
    with pytest.raises(ValueError, match=r"'hellaswagg' \(close: hellaswag") as err:
        resolve_tasks([TASK, "hellaswag", "hellaswagg"])  # indexes lm-eval's built-ins; reads no data
    assert "'hellaswag' (" not in str(err.value)  # the built-in task itself was found
    assert TASK in resolve_tasks([TASK]).task_index  # the package's own tasks need no built-in index


def test_hf_backend_model_args():
    source = backends.ModelSource("B", (Path("/a/x"), "user/y"), (0.5, 1.0), "ties", {"consensus": "count"})
    settings = backends.BackendSettings(
        dtype="bfloat16", device_map="auto", tokenizer=Path("/tok"), model_args={"max_cpu_memory": "8GB"}
    )
    assert backends.hf_model_args(source, settings) == {
        "pretrained": "B",
        "dtype": "bfloat16",
        "tokenizer": "/tok",
        "adapters": ["/a/x", "user/y"],
        "mode": "ties",
        "weights": [0.5, 1.0],
        "mode_options": {"consensus": "count"},
        "parallelize": True,
        "device_map": "auto",
        "max_cpu_memory": "8GB",
    }


def _fake_simple_evaluate(calls: list, tasks_seen: list):
    def fake(model, model_args=None, tasks=(), **kwargs):
        folder = Path(model_args["pretrained"])
        files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        calls.append((model, dict(model_args), files, kwargs))
        tasks_seen.append(list(tasks))
        return {"results": {t: {"acc,none": 0.5, "acc_stderr,none": 0.125} for t in tasks}}

    return fake


def test_vllm_backend_wiring_without_vllm(tiny, tmp_path, monkeypatch, capsys):
    import lm_eval

    common = [
        "eval",
        "--base",
        str(tiny["base"]),
        "--domain",
        f"fin={tiny['ft']}",
        "--tasks",
        f"fin={TASK}",
        "--adapter",
        f"fin={tiny['adapter']}",
        "--backend",
        "vllm",
        "--dtype",
        "bfloat16",
        "--num-fewshot",
        "2",
        "--model-args",
        "gpu_memory_utilization=0.8,tensor_parallel_size=2",
    ]
    assert main([*common, "--out", str(tmp_path / "r0")]) == 2  # vLLM is not installed here
    assert "pip install 'dppa-peft[vllm]'" in capsys.readouterr().err
    calls, tasks_seen = [], []
    monkeypatch.setattr(backends, "require_vllm", lambda: None)
    monkeypatch.setattr(lm_eval, "simple_evaluate", _fake_simple_evaluate(calls, tasks_seen))
    assert main([*common, "--out", str(tmp_path / "r1")]) == 0
    assert [c[0] for c in calls] == ["vllm"] * 3
    (_, base_args, _, kwargs), (_, ft_args, _, _), (_, variant_args, files, _) = calls
    assert base_args == {
        "pretrained": str(tiny["base"]),
        "dtype": "bfloat16",
        "tokenizer": str(tiny["base"]),
        "gpu_memory_utilization": 0.8,
        "tensor_parallel_size": 2,
    }
    assert ft_args["pretrained"] == str(tiny["ft"]) and kwargs["num_fewshot"] == 2 and tasks_seen[0] == [TASK]
    assert kwargs["device"] is None and kwargs["bootstrap_iters"] == 1000  # vLLM places the model itself
    merged = Path(variant_args["pretrained"])
    assert "config.json" in files and "model.safetensors" in files  # written once for the variant...
    assert not merged.exists()  # ...and removed after
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report["variants"][0]["stderr"] == {TASK: 0.125} and report["dense_stderr"] == {"fin": {TASK: 0.125}}
    calls.clear()
    assert main([*common, "--out", str(tmp_path / "r2"), "--keep-merged"]) == 0
    kept = Path(calls[2][1]["pretrained"])
    assert kept.parent == tmp_path / "r2-merged" and (kept / "model.safetensors").is_file()
    expected = merge_to_folder(tiny["base"], [tiny["adapter"]], tmp_path / "m", dtype=torch.bfloat16, progress=False)
    assert torch.equal(
        _logits(AutoModelForCausalLM.from_pretrained(kept)), _logits(AutoModelForCausalLM.from_pretrained(expected))
    )
