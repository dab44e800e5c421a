"""Learned amplification vs the golden-section ("default") and "reference" DPA searches, on the demo zoo.

For every domain fine-tune: one pruned adapter (``--method``, ``--rate``), then each strategy finds its factors from
the domain's dev-split prompts (the same 80% training prompts for every strategy; the other 20% are held out and
never seen by any of them). Reported per strategy: objective calls or optimiser steps, wall time (the dense
fine-tune's cached outputs plus the search or the learning; wall and this process's CPU seconds, which do not count
other processes sharing the machine), held-out KL(dense ‖ candidate) on the held-out prompts,
and Domain-Ratio (paper eq. 8) on the dev and test splits of the domain's lm-eval tasks. Ratios learned / golden-section
are printed at the end.

    OMP_NUM_THREADS=1 python bench/learned_vs_search.py                    # the default demo zoo, magnitude, 0.9
    python bench/learned_vs_search.py --method dp --domains math --json out.json
    python bench/learned_vs_search.py --steps 200 --partition-rates 0.99 0.97 0.94 0.9   # the demo's setting
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from _common import print_table
from dppa_peft import SparseDeltaAdapter, load_merged, prune
from dppa_peft.amplify.api import write_amplified
from dppa_peft.amplify.calibration import Prompt
from dppa_peft.amplify.candidate import AmplifiedModel, load_base_model
from dppa_peft.format.amplification import amplification_record
from dppa_peft.amplify.learned import (
    LearnParams,
    build_teacher,
    learn_factors,
    mean_kl,
    split_indices,
)
from dppa_peft.amplify.objectives import KLObjective
from dppa_peft.format.partitions import adapter_partitions
from dppa_peft.amplify.search import default_bounds, search_factors
from dppa_peft.demo.domains import DOMAINS, task_split
from dppa_peft.demo.tasks import domain_task_names
from dppa_peft.demo.zoo import build_zoo
from dppa_peft.lmeval.ratios import domain_ratio, task_ratio
from dppa_peft.evaluation.runner import Evaluator
from dppa_peft.lmeval.tasks import task_manager

CONTINUATION = 8
BATCH = 8


class Clock:
    """Wall and CPU (this process) seconds since the last lap: CPU time is what the work costs on a shared machine."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        spent = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return spent


def domain_ratios(
    evaluator: Evaluator, model: torch.nn.Module, dense: dict[str, dict[str, float]], domain: str
) -> dict[str, float]:
    """Domain-Ratio of ``model`` on the domain's dev and test tasks."""
    out = {}
    for split in ("dev", "test"):
        tasks = domain_task_names(split)[domain]
        scores = evaluator.scores(model, tasks)
        out[split] = domain_ratio(task_ratio(scores[t], dense[split][t]) for t in tasks)
    return out


def bench_domain(
    zoo,
    domain: str,
    method: str,
    rate: float,
    evaluator: Evaluator,
    params: LearnParams,
    root: Path,
    learned_rates: list[float] | None = None,
    **method_params: float,
) -> list[dict]:
    finetuned = zoo.finetunes[domain]
    tokenizer = AutoTokenizer.from_pretrained(finetuned)
    prompts = [
        Prompt(ex.prompt, f"{task}[{i}]") for task in DOMAINS[domain] for i, ex in enumerate(task_split(task, "dev"))
    ]
    train, _ = split_indices(len(prompts), params.learn_heldout, params.learn_seed)
    dense_model = AutoModelForCausalLM.from_pretrained(finetuned)
    dense = {s: evaluator.scores(dense_model, domain_task_names(s)[domain]) for s in ("dev", "test")}
    adapter = prune(
        zoo.base, finetuned, root / f"{domain}-{method}", method=method, rate=rate, progress=False, **method_params
    )[0]
    partitions = adapter_partitions(adapter, [rate])

    clock = Clock()
    teacher = build_teacher(
        dense_model,
        tokenizer,
        prompts,
        continuation_tokens=CONTINUATION,
        batch_size=BATCH,
        heldout=params.learn_heldout,
        seed=params.learn_seed,
        name=domain,
    )
    teacher_seconds = clock.lap()
    objective = KLObjective(
        dense_model,
        tokenizer,
        [prompts[i].text for i in train],
        CONTINUATION,
        max_length=dense_model.config.max_position_embeddings,
        batch_size=BATCH,
    )
    objective_seconds = clock.lap()
    del dense_model

    rows = []
    candidate = AmplifiedModel(load_base_model(zoo.base, adapter), adapter, partitions)
    bounds = default_bounds(bool(adapter.config.method["params"].get("rescale", False)))
    for strategy in ("none", "default", "reference"):
        if strategy == "none":
            factors, calls, seconds = [1.0] * partitions.count, 0, (0.0, 0.0)
        else:
            clock.lap()
            result = search_factors(
                lambda f: objective(candidate.apply(f)), partitions.count, strategy, 1, bounds=bounds, progress=False
            )
            spent = clock.lap()
            factors, calls = result.factors, result.calls
            seconds = (objective_seconds[0] + spent[0], objective_seconds[1] + spent[1])
        model = candidate.apply(factors)
        rows.append(
            {
                "domain": domain,
                "strategy": strategy,
                "work": f"{calls} calls",
                "seconds": seconds,
                "factors": str(factors),
                "heldout_kl": mean_kl(model, teacher.heldout),
                **domain_ratios(evaluator, model, dense, domain),
            }
        )

    parts = adapter_partitions(adapter, learned_rates or [rate])
    student = load_base_model(zoo.base, adapter)
    clock.lap()
    learned = learn_factors(student, [adapter], [teacher], params, partitions=[parts], progress=False)
    spent = clock.lap()
    seconds = (teacher_seconds[0] + spent[0], teacher_seconds[1] + spent[1])
    folder = root / f"{domain}-{method}-learned"
    folder.mkdir()
    block = amplification_record(parts.rates, [1.0] * parts.count)
    block["learned"] = learned.record()
    write_amplified(adapter, folder, parts, block, {}, learned.factors[0])
    model = load_merged(zoo.base, [SparseDeltaAdapter(folder)], progress=False)
    stats = learned.record()["factor_stats"]
    rows.append(
        {
            "domain": domain,
            "strategy": f"learned ({params.learn_granularity}{f', {parts.count} partitions' if parts.count > 1 else ''})",
            "work": f"{learned.steps} steps",
            "seconds": seconds,
            "factors": f"{stats['count']} in [{stats['min']:.2f}, {stats['max']:.2f}]",
            "heldout_kl": mean_kl(model, teacher.heldout),
            **domain_ratios(evaluator, model, dense, domain),
        }
    )
    assert abs(rows[-1]["heldout_kl"] - learned.heldout_kl_after) <= 1e-4 * max(1e-6, learned.heldout_kl_after)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "dppa-peft" / "zoo"), help="zoo cache")
    parser.add_argument("--size", default="default", help="zoo size (default, tiny)")
    parser.add_argument("--method", default="magnitude", help="pruning method giving the mask")
    parser.add_argument("--rate", type=float, default=0.9, help="pruning rate")
    parser.add_argument("--min-density", type=float, help="dp: density floor (keeps every module)")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), help="domains to run")
    parser.add_argument("--granularity", default="row", help="learned amplification granularity")
    parser.add_argument("--steps", type=int, default=LearnParams.learn_steps, help="learned: Adam steps")
    parser.add_argument("--lr", type=float, default=LearnParams.learn_lr, help="learned: Adam learning rate")
    parser.add_argument(
        "--partition-rates",
        type=float,
        nargs="+",
        help="learned: magnitude partitions, a factor per (partition, row) (the demo: 0.99 0.97 0.94 0.9 at 0.9)",
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    zoo = build_zoo(args.cache, size=args.size)
    evaluator = Evaluator(AutoTokenizer.from_pretrained(zoo.base), task_manager(), batch_size=32)
    params = LearnParams(learn_granularity=args.granularity, learn_steps=args.steps, learn_lr=args.lr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for domain in args.domains:
            extra = {} if args.min_density is None else {"min_density": args.min_density}
            rows += bench_domain(
                zoo, domain, args.method, args.rate, evaluator, params, Path(tmp), args.partition_rates, **extra
            )
    floor = "" if args.min_density is None else f" (min density {args.min_density})"
    print(
        f"demo zoo {args.size}, method {args.method}{floor}, rate {args.rate}, torch threads {torch.get_num_threads()}; "
        f"held-out = {params.learn_heldout:.0%} of each domain's dev prompts, unseen by every strategy"
    )
    columns = ["domain", "strategy", "calls / steps", "wall s", "CPU s", "factors", "held-out KL", "Domain-Ratio dev"]
    cells = [
        [r["domain"], r["strategy"], r["work"], f"{r['seconds'][0]:.1f}", f"{r['seconds'][1]:.1f}", r["factors"]]
        + [f"{r['heldout_kl']:.4f}", f"{r['dev']:.3f}", f"{r['test']:.3f}"]
        for r in rows
    ]
    print_table([*columns, "test"], cells)
    for domain in args.domains:
        by = {r["strategy"].split(" ")[0]: r for r in rows if r["domain"] == domain}
        learned, golden = by["learned"], by["default"]
        wall, cpu = (learned["seconds"][i] / golden["seconds"][i] for i in (0, 1))
        print(
            f"{domain}: learned / golden-section: wall time {wall:.2f}x, CPU time {cpu:.2f}x, held-out KL "
            f"{learned['heldout_kl'] / golden['heldout_kl']:.3f}x, test Domain-Ratio {learned['test']:.3f} vs "
            f"{golden['test']:.3f} (reference {by['reference']['test']:.3f}, factors 1.0 {by['none']['test']:.3f})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
