"""lm-eval task folders shipped with the package (package data): ``paper/`` and ``synthetic/``."""

from pathlib import Path

#: The folder holding one subfolder of task YAMLs per task family.
TASKS_DIR = Path(__file__).resolve().parent
