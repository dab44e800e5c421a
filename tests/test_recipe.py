import pytest
import torch
from transformers import AutoModelForCausalLM

from dppa_peft.cli import main
from dppa_peft.recipe import Recipe
from tests.expected import PROMPT, logits_with, magnitude_merged_weights


def test_recipe_prunes_and_merges(tmp_path, llama_pair, llama_finetunes, capsys):
    base, _ = llama_pair
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
base: {base}
output_dir: out
prune: {{method: magnitude, rate: 0.8}}
finetunes: {{a: {llama_finetunes[0]}, b: {llama_finetunes[1]}}}
merge: {{mode: sum, weights: {{a: 0.5}}}}
""")
    assert main(["run", str(recipe)]) == 0
    assert "a: kept density" in capsys.readouterr().out
    weights = magnitude_merged_weights(base, llama_finetunes[0], 0.2, weight=0.5)
    weights = magnitude_merged_weights(base, llama_finetunes[1], 0.2, start=weights)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    with torch.no_grad():
        assert torch.allclose(merged(PROMPT).logits, logits_with(base, weights), atol=1e-5)


@pytest.mark.parametrize("text,message", [
    ("base: b\nfinetunes: {a: x}\n", r"missing keys \['output_dir'\]"),
    ("base: b\noutput_dir: o\nfinetunes: {a: x}\nprune: {method: nope}\n", "unknown method 'nope'"),
    ("base: b\noutput_dir: o\nfinetunes: {a: x}\nmerge: {weights: {z: 1}}\n", r"unknown domains \['z'\]"),
    ("base: b\noutput_dir: o\nfinetunes: {a: x}\ncolor: red\n", r"unknown keys \['color'\]"),
    ("base: b\noutput_dir: o\nfinetunes: {a: x}\nmerge: {mode: mean}\n", "merge: unknown merge mode 'mean'"),
    ("base: b\noutput_dir: o\nfinetunes: {a: x}\nmerge: {mode: sum, options: {density: 0.5}}\n",
     r"merge: merge mode 'sum' has no option \['density'\]"),
])
def test_bad_recipes_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Recipe.load(path)


def test_paper_recipe_is_valid():
    from tests.hub_fixtures import REPO_ROOT

    recipe = Recipe.load(REPO_ROOT / "recipes" / "llama2-dppa.yaml")
    assert recipe.method == "dp" and recipe.rate == 0.9 and sorted(recipe.finetunes) == ["finance", "law", "math"]
