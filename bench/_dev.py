"""The dev-split protocol shared by ``merge_dev.py`` and ``learn_dev.py``: two folds of the demo's dev docs.

Fold k (k = 0, 1): learning sees the dev docs with index % 2 != k (topped up with prompts drawn from the task
generators, never a dev or test prompt); the result is scored on the dev docs with index % 2 == k. The test split
is never read.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

from dppa_peft.demo.calibration import calibration_prompts
from dppa_peft.demo.domains import DOMAINS, task_split
from dppa_peft.demo.tasks import task_name

FOLDS = (0, 1)
ZOO_CACHE = Path.home() / ".cache" / "dppa-peft" / "zoo"


def dev_parser(doc: str, settings_of: str, calibration_default: int | None) -> argparse.ArgumentParser:
    """The options both dev scripts take: the zoo cache, the pruning rate, the calibration prompts, the settings."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=str(ZOO_CACHE))
    parser.add_argument("--rate", type=float, default=0.9)
    parser.add_argument(
        "--calibration-prompts",
        type=int,
        default=calibration_default,
        help="prompts per domain to learn on: the learning fold's dev docs plus prompts drawn from the task "
        "generators (never a dev or test prompt) up to this many (default: "
        + ("the fold's dev docs only" if calibration_default is None else f"{calibration_default}")
        + ")",
    )
    parser.add_argument(
        "--settings", help=f"JSON object: name -> {settings_of} options (default: the script's default_settings)"
    )
    parser.add_argument("--json", help="write the results here")
    return parser


def fold_docs(task: str, fold: int, held: bool) -> list:
    """The dev docs of ``task`` in fold ``fold``: the held-out ones (index % 2 == fold) or the learning ones."""
    return [ex for i, ex in enumerate(task_split(task, "dev")) if (i % 2 == fold) == held]


def learning_prompts(task: str, fold: int, per_domain: int | None) -> list[str]:
    """The learning fold's dev prompts of ``task``, topped up from its generator to ``per_domain`` / tasks."""
    own = [ex.prompt for ex in fold_docs(task, fold, held=False)]
    domain = next(d for d, tasks in DOMAINS.items() if task in tasks)
    extra = 0 if per_domain is None else max(0, per_domain // len(DOMAINS[domain]) - len(own))
    drawn = list(calibration_prompts(task, extra))
    scored = {ex.prompt for split in ("dev", "test") for ex in task_split(task, split)} - set(own)
    if set(drawn) & scored:
        raise AssertionError(f"{task}: a drawn calibration prompt is a scored dev or test prompt")
    return own + drawn


def write_learning_file(path: Path, domain: str, fold: int, per_domain: int | None) -> str:
    """The learning fold's prompts of every task of ``domain`` as a calibration JSONL at ``path``."""
    rows = [{"text": text} for t in DOMAINS[domain] for text in learning_prompts(t, fold, per_domain)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def heldout_prompts(domain: str, fold: int) -> list:
    """The held-out dev prompts of ``domain`` in ``fold`` (for KL), as ``Prompt``s."""
    from dppa_peft.amplify.calibration import Prompt

    return [
        Prompt(ex.prompt, f"{domain}[{i}]")
        for t in DOMAINS[domain]
        for i, ex in enumerate(fold_docs(t, fold, held=True))
    ]


def score(model, tokenizer, manager, domain: str, fold: int) -> dict[str, float]:
    """lm-eval ``acc`` of ``model`` on the held-out dev docs of ``domain``'s tasks in ``fold``."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tasks = [task_name(t, "dev") for t in DOMAINS[domain]]
    samples = {
        name: [i for i in range(len(task_split(t, "dev"))) if i % 2 == fold] for name, t in zip(tasks, DOMAINS[domain])
    }
    with contextlib.redirect_stderr(io.StringIO()):
        lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=32)
        out = simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, samples=samples, bootstrap_iters=0, verbosity="ERROR"
        )
    return {t: out["results"][t]["acc,none"] for t in tasks}


def summary(options: dict, per: dict[str, list[float]], kls: dict[str, list[float]], seconds: float) -> dict:
    """One setting's result: the mean over the folds of each domain's Domain-Ratio and held-out KL, the fold values."""
    return {
        "options": options,
        "domain_ratio": {d: sum(v) / len(v) for d, v in per.items()},
        "folds": per,
        "kl": {d: sum(v) / len(v) for d, v in kls.items()},
        "seconds": seconds,
    }


def report(results: dict[str, dict], domains: list[str], seconds_label: str, json_path: str | None) -> None:
    """The table of every setting's ``summary`` (and the JSON file, when asked)."""
    from _common import print_table

    rows = [
        [name]
        + [f"{r['domain_ratio'][d]:.1f}" for d in domains]
        + [f"{sum(r['kl'].values()) / len(domains):.3f}", f"{r['seconds']:.0f}"]
        for name, r in results.items()
    ]
    print_table(["setting", *(f"{d} dev %" for d in domains), "held-out KL", seconds_label], rows)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
