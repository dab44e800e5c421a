import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from dppa_peft.cli import build_parser, main
from tests.expected import PROMPT, logits_with, magnitude_merged_weights
from tests.cli_args import flags, run_prune
from tests.hub_fixtures import REPO_ROOT


def _subcommand_parsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_option_of_every_subcommand_has_help():
    for name, sub in _subcommand_parsers().items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, f"{name} {action.option_strings} lacks help"


def test_help_runs_as_a_program():
    out = subprocess.run(
        [sys.executable, "-m", "dppa_peft", "prune", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--base", "--finetuned", "--method", "--rate", "--out", "--seed", "--tie-mode", "--outside-scope"):
        assert flag in out


def test_prune_then_merge_from_the_command_line(tmp_path, llama_pair, capsys):
    base, ft = llama_pair
    assert run_prune(base, ft, tmp_path / "a", rate=0.9) == 0
    line = capsys.readouterr().out
    assert "kept density 0.0999" in line and "of their dense delta" in line
    assert main(["merge", "--base", str(base), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 0
    assert "1 adapter(s) merged" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        logits = merged(PROMPT).logits
    assert torch.allclose(logits, logits_with(base, magnitude_merged_weights(base, ft, 0.1)), atol=1e-5)


def test_dare_seed_reaches_the_method(tmp_path, llama_pair):
    base, ft = llama_pair
    for seed in ("1", "2"):
        assert run_prune(base, ft, tmp_path / seed, method="dare", rate=0.5, seed=seed) == 0
    configs = [json.loads((tmp_path / s / "adapter_config.json").read_text()) for s in ("1", "2")]
    assert [c["method"]["params"]["seed"] for c in configs] == [1, 2]
    assert "dppa-peft prune" in configs[0]["provenance"]["command"]


@pytest.mark.parametrize(
    "pair,extra,message",
    [
        (("/nonexistent/base", "/nonexistent/ft"), [], "no such folder"),
        (None, ["--seed", "3"], "--seed does not apply to method 'magnitude'"),
    ],
)
def test_bad_input_gets_a_clear_error(pair, extra, message, tmp_path, capsys, llama_pair):
    assert run_prune(*(pair or llama_pair), tmp_path / "out", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_inspect_pair_and_adapter(tmp_path, llama_pair, capsys):
    base, ft = llama_pair
    png = tmp_path / "plan.png"
    assert main(["inspect", *flags(base=base, finetuned=ft, method="magnitude", rate=0.8, png=png)]) == 0
    out = capsys.readouterr().out
    assert "~all in-scope" in out and "self_attn.q_proj" in out
    assert out.count("0.2000") == 14  # 2 blocks x 7 modules at uniform density 0.2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_prune(base, ft, tmp_path / "a", rate=0.8) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "a")]) == 0
    table = capsys.readouterr().out
    assert "magnitude at rate 0.8" in table and table.count("0.1997") == 4  # k/v: floor(0.2*2048)/2048 in 2 blocks
    assert main(["inspect", str(tmp_path / "a"), "--base", str(base)]) == 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["push", "/nowhere/a", "user/x", "--base", "/nowhere/b"],
            "--base only applies to --export-format supertuning",
        ),
        (["push", "/nowhere/a", "user/x/y"], "push.repo_id: 'user/x/y' is not a Hub repo id"),
        (["push", "/nowhere/a", "user/x", "--base-revision", "v1"], "--base-revision needs --base"),
        (["demo", "--limit", "0", "--out", "/nowhere/demo"], "demo.limit must be >= 1, got 0"),
        (["run", "/nowhere/recipe.yaml"], "cannot read recipe /nowhere/recipe.yaml"),
    ],
)
def test_push_export_demo_run_validate_before_any_work(argv, message, capsys):
    """The options of push, export, demo and run come from their specs and fail before anything is read or written
    (the adapter and output paths above do not exist: a check after the first read would name them)."""
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_push_export_demo_run_options_are_their_specs():
    from dppa_peft.core.spec import Source, SpecError
    from dppa_peft.demo.spec import DemoSpec
    from dppa_peft.publish.spec import ExportSpec, PushSpec
    from dppa_peft.recipe.spec import RunSpec

    old_flags = {  # the hand-written parsers' options: every one is still there
        "push": "--private --revision --commit-message --create-pr --export-format --base --base-revision "
        "--base-model-id --eval-results",
        "export": "--format --adapter-revision --base --base-revision --overwrite",
        "demo": "--out --cache-dir --size --seed --objective --limit",
        "run": "--overwrite",
    }
    parsers = _subcommand_parsers()
    for name, expected in old_flags.items():
        assert set(expected.split()) <= {o for a in parsers[name]._actions for o in a.option_strings}, name
    spec = ExportSpec(adapter="a", out="o")
    assert (spec.adapter, spec.export_format, spec.base) == (Source(ref="a"), "supertuning", None)
    with pytest.raises(
        SpecError, match=r"export.export_format: 'peft' is not one of \['sparse-delta', 'supertuning'\]"
    ):
        ExportSpec(adapter="a", out="o", export_format="peft")
    with pytest.raises(SpecError, match="demo.size: 'huge' is not one of"):
        DemoSpec(size="huge")
    assert PushSpec(adapter="a", repo_id="u/r").export_format == "sparse-delta"
    assert RunSpec(recipe="r.yaml").overwrite is False
