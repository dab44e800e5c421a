"""CONTRIBUTING.md's worked example, executed as written: the documented method module registers a new method,
its documented test passes, and the common matrix, the shared edge-case tests and the CLI take it without any other
edit."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dppa_peft.cli import main
from dppa_peft.methods import METHODS
from tests import test_methods_baselines as shared
from tests.hub_fixtures import REPO_ROOT
from tests.matrix import Matrix, check_method

NAME = "row_magnitude"


def worked_example(kind: str) -> str:
    """The Python block after ``<!-- worked-example: KIND -->`` in CONTRIBUTING.md."""
    text = (REPO_ROOT / "CONTRIBUTING.md").read_text()
    match = re.search(rf"<!-- worked-example: {kind} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, f"CONTRIBUTING.md has no '{kind}' worked example"
    return match.group(1)


@pytest.fixture
def documented_method() -> Iterator[dict]:
    """Run the documented module as ``dppa_peft/methods/row_magnitude.py`` would run; unregister it afterwards."""
    assert NAME not in METHODS
    namespace = {"__name__": f"dppa_peft.methods.{NAME}", "__package__": "dppa_peft.methods"}
    exec(compile(worked_example("method"), "CONTRIBUTING.md", "exec"), namespace)
    try:
        yield namespace
    finally:
        METHODS.pop(NAME, None)


def test_documented_method_and_its_test(documented_method: dict) -> None:
    assert METHODS[NAME] is documented_method["RowMagnitude"]
    tests: dict = {}
    exec(compile(worked_example("test"), "CONTRIBUTING.md", "exec"), tests)
    tests["test_row_magnitude_keeps_the_top_k_of_each_row"]()


def test_documented_method_passes_the_common_matrix(documented_method: dict, matrix: Matrix) -> None:
    check_method(NAME, matrix)
    shared.test_density_zero_and_one(NAME)
    shared.test_all_zero_delta_keeps_nothing(NAME)
    for shape in [(1, 1), (1, 2)]:  # one row: floor(d·n) overall; a 2 x 1 tensor keeps floor(0.5·1) = 0 per row
        shared.test_tiny_tensors(NAME, shape)


def test_documented_method_from_the_cli(documented_method: dict, matrix: Matrix, tmp_path: Path) -> None:
    pair = matrix.pairs["fp32"]
    assert main(["prune", "--base", str(pair.base), "--finetuned", str(pair.finetunes[0]), "--method", NAME,
                 "--rate", "0.75", "--out", str(tmp_path / "a")]) == 0
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["method"]["name"] == NAME
    q = config["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    assert q["nnz"] == 64 * 16  # 64 rows of 64, a quarter of each row
