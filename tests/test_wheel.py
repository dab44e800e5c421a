"""The built wheel works outside the repository: it ships the lm-eval task folders, and ``dppa-peft eval`` runs from
any directory. The wheel goes into a fresh venv (no pip inside, nothing downloaded); the heavy dependencies (torch,
transformers, lm-eval, ...) come from this interpreter's site-packages through a ``.pth`` line, which is not
processed for its own ``.pth`` files, so this checkout's editable install is not seen."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

from tests.hub_fixtures import REPO_ROOT
from tests.tiny_models import make_base, make_finetune, make_tokenizer

TASK = "demo_finance_sentiment"


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(
            f"{args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}", pytrace=False
        )
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the freshly built wheel (its bin folder is returned)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # build a copy: setuptools writes build/ and *.egg-info next to the sources
    for folder in ("dppa_peft", "eval_tasks"):  # eval_tasks/ ships as dppa_peft.eval_tasks (pyproject's package-dir)
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(root / "dist"),
            str(source),
        ],
        cwd=root,
    )
    [wheel] = list((root / "dist").glob("dppa_peft-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        cwd=root,
    )
    purelib = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip()
    )
    (purelib / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.mark.slow
def test_installed_wheel_finds_its_tasks_and_evaluates_from_outside_the_repo(installed, tmp_path):
    origin = Path(
        _run(
            [str(installed / "python"), "-c", "import importlib.util as u; print(u.find_spec('dppa_peft').origin)"],
            cwd=tmp_path,
        ).stdout.strip()
    )
    assert origin.is_relative_to(installed.parent)  # the wheel's copy, not this checkout (import not run: fast)
    shipped = origin.parent / "eval_tasks"
    for name in (f"synthetic/{TASK}.yaml", "synthetic/utils.py", "paper/paper_math.yaml", "paper/_math_template"):
        assert (shipped / name).is_file(), name
    assert "--num-fewshot" in _run([str(installed / "dppa-peft"), "eval", "--help"], cwd=tmp_path).stdout
    base = make_tokenizer(make_base(tmp_path / "base"))
    finetuned = make_finetune(base, tmp_path / "ft", steps=2)
    _run(
        [
            str(installed / "dppa-peft"),
            "eval",
            "--base",
            "base",
            "--domain",
            "fin=ft",
            "--tasks",
            f"fin={TASK}",
            "--limit",
            "4",
            "--batch-size",
            "4",
            "--num-fewshot",
            "1",
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--out",
            "report",
        ],
        cwd=finetuned.parent,
    )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert list(report["dense"]["fin"]) == [TASK] and TASK in report["dense_stderr"]["fin"]


def test_pyproject_lists_every_package_folder():
    """setuptools gets the packages by name (``eval_tasks/`` at the root cannot be found): the list is complete."""
    listed = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    folders = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in (REPO_ROOT / "dppa_peft").rglob("__init__.py")}
    tasks = {"dppa_peft.eval_tasks"} | {
        f"dppa_peft.eval_tasks.{p.name}"
        for p in (REPO_ROOT / "eval_tasks").iterdir()
        if p.is_dir() and p.name != "__pycache__"
    }
    assert sorted(listed) == sorted(folders | tasks)
