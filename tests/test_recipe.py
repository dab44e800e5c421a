import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from dppa_peft.cli import main
from dppa_peft.recipe.runner import Recipe
from tests.expected import PROMPT, logits_with, magnitude_merged_weights


def _recipe(tmp_path, llama_pair, llama_finetunes, prune="{method: magnitude, rate: 0.8}"):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
base: {llama_pair[0]}
output_dir: out
prune: {prune}
finetunes: {{a: {llama_finetunes[0]}, b: {llama_finetunes[1]}}}
merge: {{mode: sum, weights: {{a: 0.5}}}}
""")
    return recipe


def test_recipe_prunes_and_merges_then_resumes(tmp_path, llama_pair, llama_finetunes, capsys):
    base, _ = llama_pair
    recipe = _recipe(tmp_path, llama_pair, llama_finetunes)
    assert main(["run", str(recipe)]) == 0
    assert "a: kept density" in capsys.readouterr().out
    weights = magnitude_merged_weights(base, llama_finetunes[0], 0.2, weight=0.5)
    weights = magnitude_merged_weights(base, llama_finetunes[1], 0.2, start=weights)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    with torch.no_grad():
        assert torch.allclose(merged(PROMPT).logits, logits_with(base, weights), atol=1e-5)
    state = json.loads((tmp_path / "out" / "recipe-state.json").read_text())
    assert sorted(state) == ["merge", "prune a", "prune b"]
    assert main(["run", str(recipe)]) == 0  # rerun: every step finished, nothing redone
    out = capsys.readouterr().out
    assert out.count("done earlier, skipped") == 3 and "kept density" not in out


def test_changed_step_is_not_silently_replaced(tmp_path, llama_pair, llama_finetunes, capsys):
    recipe = _recipe(tmp_path, llama_pair, llama_finetunes)
    assert main(["run", str(recipe)]) == 0
    _recipe(tmp_path, llama_pair, llama_finetunes, prune="{method: magnitude, rate: 0.5}")
    assert main(["run", str(recipe)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["run", str(recipe), "--overwrite"]) == 0
    config = json.loads((tmp_path / "out" / "a" / "adapter_config.json").read_text())
    assert config["method"]["rate"] == 0.5


@pytest.mark.parametrize(
    "text,message",
    [
        ("base: b\nfinetunes: {a: x}\n", "recipe: missing key 'output_dir'"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\nprune: {method: nope}\n", "prune.method: 'nope' is not one of"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\nmerge: {weights: {z: 1}}\n", "merge.weights.z: unknown domain"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\ncolor: red\n", "recipe.color: unknown key"),
        (
            "base: b\noutput_dir: o\nfinetunes: {a: x}\nprune: {method: dp, params: {methd: 1}}\n",
            "prune.params.methd: unknown key",
        ),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\nprune: {ratee: 0.5}\n", "prune.ratee: unknown key"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\nmerge: {weigths: {a: 1}}\n", "merge.weigths: unknown key"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\nprune: {rate: high}\n", "prune.rate: expected float, got str"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\nprune: {dpa: {tol: [1]}}\n", "prune.dpa.tol: expected float"),
        ("base: b\noutput_dir: o\nfinetunes: [a, b]\n", "recipe.finetunes: expected a mapping"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\nmerge: {weights: {a: one}}\n", "merge.weights.a: expected float"),
        ("base: b\noutput_dir: o\nfinetunes: {../../x: y}\n", "'../../x' is not a usable domain name"),
        ("base: b\noutput_dir: o\nfinetunes: {merged: y}\n", "'merged' is not a usable domain name"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\nprune: {out: elsewhere}\n", "prune.out: set by the recipe"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x\n", r"bad.yaml:4:1: YAML syntax error"),
        ("- a\n- b\n", "a recipe is a YAML mapping"),
        ("base: b\noutput_dir: o\nfinetunes: {a: x}\nmerge: {mode: mean}\n", "merge.mode: 'mean' is not one of"),
        (
            "base: b\noutput_dir: o\nfinetunes: {a: x}\nmerge: {mode: sum, params: {density: 0.5}}\n",
            "merge.params.density: unknown key",
        ),
        (
            "base: b\noutput_dir: o\nfinetunes: {a: x}\nmerge: {mode: ties, params: {density: 2.0}}\n",
            "merge density must be in",
        ),
    ],
)
def test_bad_recipes_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Recipe.load(path)


def test_every_input_is_checked_before_the_first_prune(tmp_path, llama_pair, llama_finetunes, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"base: {llama_pair[0]}\noutput_dir: out\nprune: {{method: magnitude}}\n"
        f"finetunes: {{a: {llama_finetunes[0]}, b: {tmp_path / 'missing'}}}\n"
    )
    assert main(["run", str(recipe)]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "out" / "a").exists()


def test_paper_recipe_is_valid():
    from tests.hub_fixtures import REPO_ROOT

    recipe = Recipe.load(REPO_ROOT / "recipes" / "llama2-dppa.yaml")
    assert sorted(recipe.prunes) == ["finance", "law", "math"]
    spec = recipe.prunes["math"]
    assert spec.method == "dp" and spec.rate == 0.9 and spec.params["dp_variant"] == "code"
    assert spec.finetuned.ref == "GAIR/Abel-7B-001" and recipe.merge is not None and recipe.merge.mode == "sum"
