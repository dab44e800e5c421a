"""``dppa-peft demo``: the paper's experiment in miniature, offline, on the demo zoo.

Builds (or reuses) the zoo, prunes every domain fine-tune with each variant of ``lineup`` at each rate (baselines,
DPPA with its factors searched on the dev tasks, learned amplification on magnitude and DP masks learned on the dev
prompts), merges the three domains with every merge variant (sum, TIES, DARE-TIES, DELLA, learned, AdaMerging; the
learned ones on the dev prompts), evaluates everything through lm-eval on the test split and writes the report
(Tables 1/5/7-style Markdown and JSON, plots).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.progress import progress_bar
from transformers import AutoTokenizer

from ..core.devices import resolve_device
from ..evaluation.backends import BackendSettings
from ..evaluation.report import EvalResults, render_table, report_tables, write_report
from ..evaluation.runner import Evaluator, MergeVariant, evaluate_all
from ..lmeval.tasks import task_manager
from ..merge import create_mode, merge_to_adapter
from ..prune.api import prune, prune_and_amplify
from ..publish.adapter import open_adapter
from ..core.spec import Source
from .spec import DemoSpec
from ..evaluation.spec import Domain
from .calibration import calibration_prompts
from .domains import DOMAINS, task_split
from .lineup import MERGE_VARIANTS, PRUNE_VARIANTS, RATES
from .tasks import domain_task_names
from .zoo import Zoo, build_zoo, torch_threads


_OPTIONS = DemoSpec()  # the command line's options and their defaults live in the spec


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults are the README's main job. ``prunes`` and ``merges`` name entries of
    ``lineup.PRUNE_VARIANTS`` and ``lineup.MERGE_VARIANTS``; merges run at ``merge_rates``. ``size``, ``seed``,
    ``objective`` and ``limit`` are the options of ``DemoSpec`` (``from_spec``)."""

    size: str = _OPTIONS.size
    seed: int = _OPTIONS.seed
    rates: tuple[float, ...] = RATES
    prunes: tuple[str, ...] = tuple(PRUNE_VARIANTS)
    merges: tuple[str, ...] = tuple(MERGE_VARIANTS)
    merge_rates: tuple[float, ...] = (0.9,)
    objective: str = _OPTIONS.objective
    learn_steps: int | None = 200  # learned amplification and learned merges: Adam steps (None: the library
    # default, 60); held-out dev KL still falls at 60 steps, and the factors of the best held-out step are kept
    calibration_prompts: int | None = 400  # calibration texts per domain (kl objective, learned factors and merges):
    # the dev prompts topped up with prompts drawn from the task generators (never a dev or test prompt); None: dev only
    batch_size: int = 32
    limit: int | None = _OPTIONS.limit
    threads: int = 1  # torch threads after the zoo build: the models are tiny, and more threads crawl on a busy machine
    device: str = _OPTIONS.device  # where every model after the zoo build runs (prune, amplify, merges, lm-eval)
    dtype: str = _OPTIONS.dtype  # the dtype those models are loaded in (amplification, lm-eval)

    def __post_init__(self) -> None:
        unknown = [n for n in self.prunes if n not in PRUNE_VARIANTS] + [
            n for n in self.merges if n not in MERGE_VARIANTS
        ]
        if unknown:
            raise ValueError(
                f"unknown demo variants {unknown}; choose from {list(PRUNE_VARIANTS)} (prunes) and "
                f"{list(MERGE_VARIANTS)} (merges)"
            )
        missing = sorted({MERGE_VARIANTS[n].source for n in self.merges} - set(self.prunes))
        if missing:
            raise ValueError(f"merges {list(self.merges)} need the prune variants {missing}; add them to prunes")

    @classmethod
    def from_spec(cls, spec: DemoSpec) -> DemoSettings:
        return cls(
            size=spec.size,
            seed=spec.seed,
            objective=spec.objective,
            limit=spec.limit,
            device=spec.device,
            dtype=spec.dtype,
        )


@dataclass
class DemoRun:
    """Where the demo wrote its outputs and how long each phase took."""

    out: Path
    zoo: Zoo
    results: EvalResults
    seconds: dict[str, float] = field(default_factory=dict)


Adapters = dict[tuple[str, str, float], Path]  # (domain, prune variant, rate) -> adapter folder


Calibration = dict[str, Path]  # domain -> its calibration JSONL


def write_calibration(settings: DemoSettings, out: Path, domains: Iterable[str]) -> Calibration:
    """The calibration file of each of ``domains``, written once per run (``_calibration_file``)."""
    return {domain: _calibration_file(settings, out, domain) for domain in domains}


def _calibration_file(settings: DemoSettings, out: Path, domain: str) -> Path:
    """The calibration texts of a domain as JSONL (kl objective, learned factors and merges): its dev-split prompts,
    topped up to ``settings.calibration_prompts`` with prompts drawn from the task generators (none a dev or test
    prompt)."""
    path = out / "calibration" / f"{domain}_dev.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = []
    for task in DOMAINS[domain]:
        dev = [ex.prompt for ex in task_split(task, "dev")]
        per_task = 0 if settings.calibration_prompts is None else settings.calibration_prompts // len(DOMAINS[domain])
        texts += dev + list(calibration_prompts(task, max(0, per_task - len(dev))))
    if set(texts) & {ex.prompt for task in DOMAINS[domain] for ex in task_split(task, "test")}:
        raise AssertionError(f"{domain}: a calibration text is a test prompt")
    rows = [{"text": text} for text in texts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dpa_options(settings: DemoSettings, calibration: Path, domain: str) -> dict:
    if settings.objective == "kl":
        return {"objective": "kl", "calibration": str(calibration)}
    return {"objective": "tasks", "tasks": list(domain_task_names("dev")[domain]), "batch_size": settings.batch_size}


def _learn_options(settings: DemoSettings) -> dict:
    return {} if settings.learn_steps is None else {"learn_steps": settings.learn_steps}


def _slug(label: str) -> str:
    """A folder name for a variant label: ``"magnitude (adamerging task)"`` -> ``"magnitude-adamerging-task"``."""
    return "-".join("".join(c if c.isalnum() or c in "+_" else " " for c in label).split())


def prune_zoo(zoo: Zoo, settings: DemoSettings, out: Path, calibration: Calibration, progress: bool = True) -> Adapters:
    """Every (domain, prune variant, rate) adapter, written under ``out/adapters``."""
    jobs = [
        (d, PRUNE_VARIANTS[name], r)
        for d in zoo.finetunes
        for r in settings.rates
        for name in settings.prunes
        if PRUNE_VARIANTS[name].runs_at(r)
    ]
    adapters: Adapters = {}
    for domain, variant, rate in progress_bar(jobs, desc="pruning", unit="adapter", disable=not progress):
        path = out / "adapters" / domain / f"{_slug(variant.label)}-{round(rate * 100)}"
        common = dict(
            method=variant.method,
            rate=rate,
            overwrite=True,
            progress=False,
            device=settings.device,
            **variant.params(rate),
        )
        if variant.amplification == "none":
            prune(zoo.base, zoo.finetunes[domain], path, **common)
        else:
            amplify = (
                _dpa_options(settings, calibration[domain], domain)
                if variant.amplification == "dpa"
                else {
                    "search": "learned",
                    "calibration": str(calibration[domain]),
                    **_learn_options(settings),
                }
            )
            prune_and_amplify(zoo.base, zoo.finetunes[domain], path, **common, dtype=settings.dtype, **amplify)
        adapters[(domain, variant.label, rate)] = path
    return adapters


def merge_zoo(
    zoo: Zoo, settings: DemoSettings, out: Path, adapters: Adapters, calibration: Calibration, progress: bool = True
) -> list[MergeVariant]:
    """The three-domain merges to evaluate; a learned mode learns here (on the dev prompts) and its merged adapter,
    with the record of what it learned, is written under ``out/merges``."""
    jobs = [
        (MERGE_VARIANTS[name], r)
        for r in settings.merge_rates
        for name in settings.merges
        if all((d, MERGE_VARIANTS[name].source, r) in adapters for d in zoo.finetunes)
    ]
    specs = []
    for variant, rate in progress_bar(jobs, desc="merging", unit="merge", disable=not progress):
        sources = {d: adapters[(d, variant.source, rate)] for d in zoo.finetunes}
        if not variant.learns:
            specs.append(MergeVariant(sources, variant.mode, options=variant.options_at(rate), label=variant.label))
            continue
        mode = create_mode(
            variant.mode,
            calibration=[str(calibration[d]) for d in sources],
            **_learn_options(settings),
            **variant.options_at(rate),
        )
        handles = [open_adapter(path) for path in sources.values()]
        merge_to_adapter(
            zoo.base,
            handles,
            out / "merges" / f"{_slug(variant.label)}-{round(rate * 100)}",
            mode=mode,
            overwrite=True,
            progress=False,
            device=settings.device,
        )
        learned = mode.prepare(zoo.base, handles, [1.0] * len(handles), device=settings.device, progress=False)
        specs.append(MergeVariant(dict(zip(sources, learned)), label=variant.label))
    return specs


def demo(spec: DemoSpec, progress: bool = True) -> DemoRun:
    """``dppa-peft demo``: the README's demo with the options of ``spec``."""
    return run_demo(spec.out, spec.cache_dir, DemoSettings.from_spec(spec), progress=progress)


def run_demo(
    out: str | Path, cache_dir: str | Path, settings: DemoSettings = DemoSettings(), progress: bool = True
) -> DemoRun:
    """Build/reuse the zoo, prune, merge, evaluate and write ``out/report``."""
    out = Path(out)
    resolve_device(settings.device)  # an unknown or absent device is an error before any work
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def lap(phase: str) -> None:
        seconds[phase] = time.perf_counter() - start - sum(seconds.values())

    zoo = build_zoo(cache_dir, seed=settings.seed, size=settings.size, progress=progress)
    lap("zoo")
    with torch_threads(settings.threads):
        calibration = write_calibration(settings, out, zoo.finetunes)
        adapters = prune_zoo(zoo, settings, out, calibration, progress)
        lap("prune")
        merges = merge_zoo(zoo, settings, out, adapters, calibration, progress)
        lap("merge")
        test_tasks = domain_task_names("test")
        domains = [Domain(name=d, finetuned=Source.of(path), tasks=test_tasks[d]) for d, path in zoo.finetunes.items()]
        prunes = [(d, path) for (d, _, _), path in adapters.items()]
        evaluator = Evaluator(
            AutoTokenizer.from_pretrained(zoo.base),
            task_manager(),
            batch_size=settings.batch_size,
            limit=settings.limit,
            device=settings.device,
            backend=BackendSettings(dtype=settings.dtype),
        )
        results = evaluate_all(str(zoo.base), domains, evaluator, prunes=prunes, merges=merges, progress=progress)
        lap("evaluate")
    report = write_report(results, out / "report")
    (report / "demo.json").write_text(
        json.dumps({"settings": asdict(settings), "seconds": seconds, "zoo": str(zoo.root)}, indent=2)
    )
    return DemoRun(out=out, zoo=zoo, results=results, seconds=seconds)


def summary(run: DemoRun) -> str:
    """The tables a newcomer reads first: base vs dense, Domain-Ratio by method and rate, merges; timings."""
    tables = [t for t in report_tables(run.results) if "Base vs dense" in t.title or "Domain-Ratio" in t.title]
    parts = [render_table(t) for t in tables]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in run.seconds.items())
    parts.append(f"report: {run.out / 'report' / 'report.md'} (plots beside it); zoo: {run.zoo.root}; {timing}")
    return "\n\n".join(parts)
