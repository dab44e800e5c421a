"""``DemoSpec``: the offline demo's options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..core.choices import DEMO_SIZES, OBJECTIVES
from ..core.spec import RunOptions, option, positive


DEFAULT_CACHE = Path(os.environ.get("DPPA_PEFT_CACHE", Path.home() / ".cache" / "dppa-peft"))


@dataclass(frozen=True, kw_only=True)
class DemoSpec(RunOptions):
    """The offline demo: a tiny model zoo pruned and merged with every method, evaluated, reported (``device`` and
    ``dtype``: where and in what dtype every model after the zoo build runs: amplification, learned merges, lm-eval;
    the cached zoo itself is trained on the CPU)."""

    key: ClassVar[str] = "demo"
    out: str = option("demo_output", help="output folder")
    cache_dir: str = option(
        str(DEFAULT_CACHE / "zoo"),
        metavar="DIR",
        help="where the zoo is built and reused ($DPPA_PEFT_CACHE/zoo when that is set)",
    )
    size: str = option("default", choices=DEMO_SIZES, help="zoo size: 'default' (the demo) or 'tiny' (a quick check)")
    seed: int = option(0, help="zoo seed (default 0): same seed, same zoo")
    objective: str = option(
        "tasks",
        choices=OBJECTIVES,
        help=(
            "DPA objective on the dev split: 'tasks' (Domain-Ratio of the dev tasks) or 'kl' (-KL to the dense "
            "fine-tune on dev prompts)"
        ),
    )
    limit: int | None = option(None, help="evaluate only the first N examples of each task")

    def validate(self) -> None:
        positive(self, "limit")
        self._set(out=str(self.out), cache_dir=str(self.cache_dir))
