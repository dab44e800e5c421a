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
from tests.cli_args import run_prune
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
    assert run_prune(pair.base, pair.finetunes[0], tmp_path / "a", method=NAME, rate=0.75) == 0
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["method"]["name"] == NAME
    q = config["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    assert q["nnz"] == 64 * 16  # 64 rows of 64, a quarter of each row


MODE = "breadcrumbs_ties"


@pytest.fixture
def documented_mode() -> Iterator[dict]:
    """Run the documented merge mode as a module of ``dppa_peft.merge`` would; unregister it afterwards."""
    from dppa_peft.merge import MERGE_MODES

    assert MODE not in MERGE_MODES
    namespace = {"__name__": "dppa_peft.merge.breadcrumbs_ties", "__package__": "dppa_peft.merge"}
    exec(compile(worked_example("merge-mode"), "CONTRIBUTING.md", "exec", dont_inherit=True), namespace)
    try:
        yield namespace
    finally:
        MERGE_MODES.pop(MODE, None)


def test_documented_merge_mode_its_test_the_matrix_and_the_cli(
    documented_mode: dict, matrix: Matrix, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from dppa_peft.merge import MERGE_MODES
    from tests.test_matrix import test_merge_mode_paths_bit_identical

    assert MERGE_MODES[MODE] is documented_mode["BreadcrumbsTiesMode"]
    tests: dict = {}
    exec(compile(worked_example("merge-mode-test"), "CONTRIBUTING.md", "exec"), tests)
    tests["test_breadcrumbs_ties_drops_outliers_then_elects"]()
    for dtype in ("fp32", "bf16"):
        test_merge_mode_paths_bit_identical(MODE, dtype, matrix, tmp_path / dtype)
    pair = matrix.pairs["fp32"]
    adapters = [str(matrix.adapter("magnitude", "fp32", which)) for which in (0, 1)]
    assert (
        main(
            [
                "merge",
                "--base",
                str(pair.base),
                "--adapter",
                adapters[0],
                "--adapter",
                adapters[1],
                "--mode",
                MODE,
                "--density",
                "0.5",
                "--gamma",
                "0.1",
                "--out-adapter",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "m" / "adapter_config.json").read_text())["merge"]
    assert record["mode"] == MODE and record["params"]["gamma"] == 0.1
