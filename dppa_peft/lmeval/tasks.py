"""Where the project's lm-eval task folders live, and how to load them (or run them on local files).

The folders are the repository's ``eval_tasks/<name>/``, shipped in the wheel as the package ``dppa_peft.eval_tasks``
(pyproject's ``package-dir``), so an installed wheel finds them; the environment variable ``DPPA_EVAL_TASKS`` points
elsewhere.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from ..core.errors import UserError
from ..eval_tasks import TASKS_DIR

TASKS_ENV_VAR = "DPPA_EVAL_TASKS"

#: The paper's domains and their two tasks each, in the paper's order.
PAPER_DOMAINS: dict[str, tuple[str, str]] = {
    "math": ("paper_gsm8k", "paper_hendrycks_math"),
    "finance": ("paper_fiqa_sa", "paper_fpb"),
    "law": ("paper_scotus", "paper_unfair_tos"),
}
#: The lm-eval group of each paper domain.
PAPER_GROUPS: dict[str, str] = {domain: f"paper_{domain}" for domain in PAPER_DOMAINS}


def tasks_root() -> Path:
    """The ``eval_tasks`` folder: ``$DPPA_EVAL_TASKS`` if set, else the package's own (``dppa_peft.eval_tasks``)."""
    override = os.environ.get(TASKS_ENV_VAR)
    root = Path(override) if override else TASKS_DIR
    if not root.is_dir():
        source = f"${TASKS_ENV_VAR}" if override else "the installed package"
        raise FileNotFoundError(
            f"lm-eval task folder {root} (from {source}) does not exist; unset {TASKS_ENV_VAR} or point it at a "
            "folder of task subfolders (the package ships its own, eval_tasks/ in the repository)"
        )
    return root


def task_dirs(root: Path | None = None) -> list[Path]:
    """Every task subfolder of ``root`` (default :func:`tasks_root`), sorted; hidden and ``_*`` folders skipped."""
    base = root if root is not None else tasks_root()
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def task_manager(
    extra_paths: Iterable[str | Path] = (), metadata: dict[str, Any] | None = None, include_defaults: bool = False
) -> TaskManager:
    """A TaskManager over every ``eval_tasks`` subfolder plus ``extra_paths``; lm-eval's built-ins only when asked."""
    paths = [str(p) for p in task_dirs()] + [str(p) for p in extra_paths]
    return TaskManager(include_path=paths, include_defaults=include_defaults, metadata=metadata)


def resolve_tasks(
    names: Iterable[str], extra_paths: Iterable[str | Path] = (), metadata: dict[str, Any] | None = None
) -> TaskManager:
    """A TaskManager that knows every task or group in ``names``, checked before any model is loaded.

    The package's task folders and ``extra_paths`` are indexed first (fast); lm-eval's ~10k built-in tasks (e.g.
    ``hellaswag``) are indexed only when a name is not found there. Nothing is downloaded. An unknown name is a
    clear error with the closest known names.
    """
    wanted = list(dict.fromkeys(names))
    paths = list(extra_paths)
    manager = task_manager(extra_paths=paths, metadata=metadata)
    if all(name in manager.task_index for name in wanted):
        return manager
    manager = task_manager(extra_paths=paths, metadata=metadata, include_defaults=True)
    unknown = [name for name in wanted if name not in manager.task_index]
    if unknown:
        hints = {name: difflib.get_close_matches(name, manager.all_tasks, n=3) for name in unknown}
        listed = "; ".join(f"{name!r} (close: {', '.join(close) or 'none'})" for name, close in hints.items())
        raise UserError(
            f"unknown lm-eval task or group {listed}: see `lm-eval ls tasks`, or add a folder of task "
            "YAMLs with --include-path"
        )
    return manager


def _yaml_path(name: str, manager: TaskManager) -> Path:
    """The YAML file that defines task or group ``name``."""
    entry = manager.task_index.get(name)
    if entry is None or entry.yaml_path is None:
        known = ", ".join(manager.all_tasks) or "none"
        raise KeyError(f"no task or group named {name!r} in the task folders (known: {known})")
    return Path(entry.yaml_path)


def task_config(name: str, manager: TaskManager | None = None) -> dict[str, Any]:
    """The full config dict of task ``name`` (includes merged, ``!function`` entries resolved)."""
    manager = manager or task_manager()
    config = load_yaml(_yaml_path(name, manager), resolve_func=True)
    if "group" in config:
        raise ValueError(f"{name!r} is a group, not a task (run a group on local files with write_local_tasks)")
    return config


def _local_dataset(name: str, data_file: str | Path, manager: TaskManager) -> dict[str, Any]:
    """The dataset keys that make task ``name`` read its test split from a local JSON/JSONL file."""
    path = Path(data_file).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"local data file for task {name!r} not found: {path}")
    split = task_config(name, manager)["test_split"]
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {split: str(path)}}}


def local_task_config(name: str, data_file: str | Path, manager: TaskManager | None = None) -> dict[str, Any]:
    """Task ``name``'s config reading its test split from a local JSON/JSONL file instead of the Hub.

    The file must have the Hub dataset's columns. The path is made absolute (lm-eval resolves relative
    ``data_files`` against the current directory). Pass the dict to lm-eval as a task: ``tasks=[config]``.
    """
    manager = manager or task_manager()
    return {**task_config(name, manager), **_local_dataset(name, data_file, manager)}


def write_local_tasks(
    data_files: Mapping[str, str | Path], folder: str | Path, manager: TaskManager | None = None
) -> Path:
    """Write one YAML per task into ``folder`` that re-defines it to read ``data_files[task]`` locally.

    Each file includes the task's own YAML and overrides only the dataset keys, so the names stay the same: a
    TaskManager built with ``task_manager(extra_paths=[folder])`` resolves those names, and groups over them
    (e.g. ``paper_law``), to the local copies. lm-eval logs a warning for each overridden task.
    """
    manager = manager or task_manager()
    out = Path(folder).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name, data_file in sorted(data_files.items()):
        override = {"include": str(_yaml_path(name, manager)), **_local_dataset(name, data_file, manager)}
        (out / f"{name}.yaml").write_text(yaml.safe_dump(override, sort_keys=False), encoding="utf-8")
    return out
