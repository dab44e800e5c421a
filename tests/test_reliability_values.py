"""Numbers that would give silent wrong results: non-finite weights and options, dtype overflow, a wrong base."""

import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from dppa_peft import prune
from dppa_peft.core.errors import UserError
from dppa_peft.merge import merge_to_folder
from dppa_peft.core.validate import check_finite_params, finite_number
from tests.cli_args import prune_argv, prune_cli, run_cli
from tests.faults import copy_model
from tests.tiny_models import make_base, make_tokenizer

Q = "model.layers.0.self_attn.q_proj.weight"


def _poke(name, value):
    def edit(tensors):
        tensors[name].reshape(-1)[3] = value

    return edit


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_fine_tune_is_refused_by_tensor(value, tmp_path, llama_pair, capsys):
    ft = copy_model(llama_pair[1], tmp_path / "ft", _poke(Q, value))
    code, err = prune_cli(capsys, llama_pair[0], ft, tmp_path / "out")
    assert code == 2 and f"tensor {Q!r} of the fine-tune {ft} holds 1 non-finite value(s)" in err
    assert "first at flat position 3" in err and not (tmp_path / "out").exists()


def test_non_finite_base_is_refused_by_tensor(tmp_path, llama_pair, capsys):
    base = copy_model(llama_pair[0], tmp_path / "base", _poke("lm_head.weight", math.nan))
    code, err = prune_cli(capsys, base, llama_pair[1], tmp_path / "out")
    assert code == 2 and f"tensor 'lm_head.weight' of the base {base} holds 1 non-finite" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--rate", "nan"], "pruning rate must be in [0, 1], got nan"),
        (["--method", "dp", "--lam", "nan"], "method 'dp' --lam must be a finite number, got nan"),
        (["--method", "dp", "--lam", "inf"], "method 'dp' --lam must be a finite number, got inf"),
        (["--method", "dp", "--amplify", "--factors", "nan"], "DPA --factors[0] must be a finite number, got nan"),
    ],
)
def test_non_finite_options_are_refused(argv, message, tmp_path, llama_pair, capsys):
    base, ft = llama_pair
    method = None if "--method" in argv else "magnitude"
    code, err = run_cli(capsys, *prune_argv(base, ft, tmp_path / "out", *argv, method=method))
    assert code == 2 and message in err, err


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf"])
def test_non_finite_merge_weight_is_refused(weight, tmp_path, llama_pair, capsys):
    base, ft = llama_pair
    assert prune_cli(capsys, base, ft, tmp_path / "a")[0] == 0
    code, err = run_cli(
        capsys, "merge", "--base", base, "--adapter", tmp_path / "a", f"--weight={weight}", "--out", tmp_path / "m"
    )
    assert code == 2 and f"--weight[0] must be a finite number, got {float(weight)}" in err
    assert not (tmp_path / "m").exists()


def test_python_api_checks_the_same_numbers(tmp_path, llama_pair):
    base, ft = llama_pair
    with pytest.raises(UserError, match="--weight"):
        merge_to_folder(base, ["unused"], tmp_path / "m", weights=[float("nan")])
    with pytest.raises(UserError, match="method 'dp' --lam must be a finite number"):
        prune(base, ft, tmp_path / "a", method="dp", rate=0.9, lam=float("nan"))
    assert finite_number(2, "x") == 2.0
    with pytest.raises(UserError, match="must be a number"):
        finite_number("0.5", "--rate")


def test_check_finite_params_walks_lists():
    from dppa_peft.amplify.api import AmplifyParams

    with pytest.raises(UserError, match=r"DPA --bounds\[1\] must be a finite number"):
        AmplifyParams(bounds=[0.5, float("inf")])
    check_finite_params(AmplifyParams(bounds=[0, 2]), "DPA")  # ints are numbers too


def test_float16_overflow_is_refused_by_tensor(tmp_path, llama_pair, capsys):
    ft = copy_model(llama_pair[1], tmp_path / "ft", _poke(Q, 1.0e5))
    code, err = prune_cli(capsys, llama_pair[0], ft, tmp_path / "out", "--value-dtype", "float16")
    assert code == 2 and f"tensor {Q!r}: delta values up to 1e+05 overflow --value-dtype float16" in err
    assert prune_cli(capsys, llama_pair[0], ft, tmp_path / "out", "--value-dtype", "bfloat16")[0] == 0


def test_float16_values_in_range_are_stored(tmp_path, llama_pair, capsys):
    assert prune_cli(capsys, *llama_pair, tmp_path / "out", "--value-dtype", "float16")[0] == 0


def test_wrong_base_of_the_same_shapes_warns_with_the_relative_norm(tmp_path, llama_pair, caplog):
    other = make_base(tmp_path / "other", seed=7)
    with caplog.at_level(logging.WARNING, logger="dppa_peft"):
        prune(other, llama_pair[1], tmp_path / "a", method="magnitude", progress=False)
    assert "looks unrelated to the base" in caplog.text and "relative norm" in caplog.text
    cosine = float(caplog.text.split("cosine similarity ")[1].split()[0])
    relative = float(caplog.text.split("delta norm ")[1].split("x")[0])
    assert abs(cosine) < 0.1 and relative > 1.3  # independent weights: cos ≈ 0, |δ| ≥ √2 |W|


def test_the_right_base_does_not_warn(tmp_path, llama_pair, caplog):
    with caplog.at_level(logging.WARNING, logger="dppa_peft"):
        prune(*llama_pair, tmp_path / "a", method="magnitude", progress=False)
    assert "unrelated" not in caplog.text


def test_wrong_base_warning_reaches_the_terminal(tmp_path, llama_pair, capsys):
    other = make_base(tmp_path / "other", seed=7)
    code, err = prune_cli(capsys, other, llama_pair[1], tmp_path / "a")
    assert code == 0 and "\nwarning: " in "\n" + err.replace("\r", "\n") and "looks unrelated" in err


def test_prune_warns_about_tensors_planned_below_the_density_floor(tmp_path, llama_pair, caplog):
    """Every block matrix but down_proj gets outliers (every 20th delta entry x50): DP's matrix term plans down_proj
    at 0.1 - lam = 0 (plus or minus the block term, clipped), below the floor of a tenth of the target density 0.1."""
    base_tensors = load_file(llama_pair[0] / "model.safetensors")

    def outliers(tensors):
        for name, tensor in tensors.items():
            if ".layers." in name and tensor.dim() == 2 and "down_proj" not in name:
                delta = tensor - base_tensors[name]
                delta.view(-1)[::20] *= 50
                tensors[name] = base_tensors[name] + delta

    finetuned = copy_model(llama_pair[1], tmp_path / "ft", outliers)
    with caplog.at_level(logging.WARNING, logger="dppa_peft"):
        adapter, _ = prune(llama_pair[0], finetuned, tmp_path / "dp", method="dp", rate=0.9, lam=0.1, progress=False)
    records = adapter.config.tensors
    low = sorted(n for n, r in records.items() if r.pruned and r.planned_density < 0.01)
    assert low and all("down_proj" in n for n in low)
    assert f"{len(low)} pruned tensors are planned below 0.01 density (10% of the target 0.1)" in caplog.text
    assert all(name in caplog.text for name in low[:3])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dppa_peft"):
        prune(llama_pair[0], finetuned, tmp_path / "mag", method="magnitude", rate=0.9, progress=False)
    assert "planned below" not in caplog.text  # magnitude plans the target density everywhere


def test_amplify_never_unpickles_a_bin_fine_tune(tmp_path, llama_pair, capsys, monkeypatch):
    base, ft = llama_pair
    assert prune_cli(capsys, base, ft, tmp_path / "a")[0] == 0
    pickled = tmp_path / "ft-bin"
    pickled.mkdir()
    (pickled / "config.json").write_text((ft / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on a pickle")

    monkeypatch.setattr(torch, "load", refuse)
    calibration = tmp_path / "prompts.txt"
    calibration.write_text("hello world\n")
    code, err = run_cli(
        capsys,
        "amplify",
        tmp_path / "a",
        "--base",
        base,
        "--finetuned",
        pickled,
        "--calibration",
        calibration,
        "--tokenizer",
        make_tokenizer(tmp_path / "tok"),
        "--out",
        tmp_path / "b",
    )
    assert code == 2 and f"{pickled} holds only pickled weights" in err and "Traceback" not in err, err
    assert not (tmp_path / "b").exists()
