"""``dppa-peft demo``: the paper's experiment in miniature, offline, on the demo zoo.

Builds (or reuses) the zoo, prunes every domain fine-tune with each method at each rate (DPPA's factors tuned on the
dev split), merges the three domains with DARE and with DPPA, evaluates everything through lm-eval on the test split
and writes the report (Tables 1/5/7-style Markdown and JSON, plots).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..progress import progress_bar
from transformers import AutoTokenizer

from ..amplify.api import prune_and_amplify
from ..evaluation.report import EvalResults, render_table, report_tables, write_report
from ..evaluation.runner import Evaluator, MergeVariant, evaluate_all
from ..specs import Domain
from ..evaluation.tasks import task_manager
from ..pipeline import prune
from .domains import DOMAINS, task_split
from .tasks import domain_task_names
from .zoo import Zoo, build_zoo

DPPA = "dppa"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults are the README's main job."""

    size: str = "default"
    seed: int = 0
    rates: tuple[float, ...] = (0.8, 0.9)
    methods: tuple[str, ...] = ("magnitude", "owl", "dare", "dp", DPPA)
    merge_methods: tuple[str, ...] = ("dare", DPPA)
    objective: str = "tasks"
    batch_size: int = 32
    limit: int | None = None


@dataclass
class DemoRun:
    """Where the demo wrote its outputs and how long each phase took."""

    out: Path
    zoo: Zoo
    results: EvalResults
    seconds: dict[str, float] = field(default_factory=dict)


def _calibration_file(out: Path, domain: str) -> Path:
    """The dev-split prompts of a domain as JSONL (the kl objective's calibration texts)."""
    path = out / "calibration" / f"{domain}_dev.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"text": ex.prompt} for task in DOMAINS[domain] for ex in task_split(task, "dev")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dpa_options(settings: DemoSettings, out: Path, domain: str) -> dict:
    if settings.objective == "kl":
        return {"objective": "kl", "calibration": str(_calibration_file(out, domain))}
    return {"objective": "tasks", "tasks": list(domain_task_names("dev")[domain]), "batch_size": settings.batch_size}


def prune_zoo(zoo: Zoo, settings: DemoSettings, out: Path, progress: bool = True) -> dict[tuple[str, str, float], Path]:
    """Every (domain, method, rate) adapter, written under ``out/adapters``."""
    jobs = [(d, m, r) for d in zoo.finetunes for r in settings.rates for m in settings.methods]
    adapters = {}
    for domain, method, rate in progress_bar(jobs, desc="pruning", unit="adapter", disable=not progress):
        path = out / "adapters" / domain / f"{method}-{round(rate * 100)}"
        finetuned = zoo.finetunes[domain]
        if method == DPPA:
            prune_and_amplify(zoo.base, finetuned, path, method="dp", rate=rate, overwrite=True, progress=False,
                              **_dpa_options(settings, out, domain))
        else:
            prune(zoo.base, finetuned, path, method=method, rate=rate, overwrite=True, progress=False)
        adapters[(domain, method, rate)] = path
    return adapters


def run_demo(out: str | Path, cache_dir: str | Path, settings: DemoSettings = DemoSettings(),
             progress: bool = True) -> DemoRun:
    """Build/reuse the zoo, prune, merge, evaluate and write ``out/report``."""
    out = Path(out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    zoo = build_zoo(cache_dir, seed=settings.seed, size=settings.size, progress=progress)
    seconds["zoo"] = time.perf_counter() - start
    adapters = prune_zoo(zoo, settings, out, progress)
    seconds["prune"] = time.perf_counter() - start - sum(seconds.values())
    test_tasks = domain_task_names("test")
    domains = [Domain(name=d, finetuned=str(path), tasks=test_tasks[d]) for d, path in zoo.finetunes.items()]
    prunes = [(d, path) for (d, _, _), path in adapters.items()]
    merges = [MergeVariant({d: adapters[(d, m, r)] for d in zoo.finetunes}) for m in settings.merge_methods
              for r in settings.rates]
    evaluator = Evaluator(AutoTokenizer.from_pretrained(zoo.base), task_manager(), batch_size=settings.batch_size,
                          limit=settings.limit)
    results = evaluate_all(str(zoo.base), domains, evaluator, prunes=prunes, merges=merges, progress=progress)
    seconds["evaluate"] = time.perf_counter() - start - sum(seconds.values())
    report = write_report(results, out / "report")
    (report / "demo.json").write_text(json.dumps({"settings": asdict(settings), "seconds": seconds,
                                                  "zoo": str(zoo.root)}, indent=2))
    return DemoRun(out=out, zoo=zoo, results=results, seconds=seconds)


def summary(run: DemoRun) -> str:
    """The tables a newcomer reads first: base vs dense, Domain-Ratio by method and rate, merges; timings."""
    tables = [t for t in report_tables(run.results) if "Base vs dense" in t.title or "Domain-Ratio" in t.title]
    parts = [render_table(t) for t in tables]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in run.seconds.items())
    parts.append(f"report: {run.out / 'report' / 'report.md'} (plots beside it); zoo: {run.zoo.root}; {timing}")
    return "\n\n".join(parts)
