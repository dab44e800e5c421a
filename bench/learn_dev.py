"""Choose the demo's single-adapter learned-amplification setting on the dev split only (never the test split).

The protocol of ``merge_dev.py`` for one adapter at a time (``_dev.py``: two folds of the dev docs). Fold k: each
domain fine-tune of the demo zoo is pruned (magnitude, ``--rate``); each candidate setting learns the adapter's
factors from its dense fine-tune on the learning fold's prompts (topped up to ``--calibration-prompts`` per domain
from the task generators, as the demo does); the amplified model is scored on the held-out fold: Domain-Ratio (paper
eq. 8, vs the dense fine-tune on the same docs) and KL(dense fine-tune ‖ amplified) per position. Printed per
setting: the mean of the two folds per domain, and the learning time.

    OMP_NUM_THREADS=1 python bench/learn_dev.py                         # the settings of SETTINGS, 400 prompts
    python bench/learn_dev.py --settings '{"rows": {"learn_steps": 60}}' --json out.json
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

from _dev import FOLDS, heldout_prompts, report, score, summary, write_learning_file
from dppa_peft import load_merged
from dppa_peft.amplify.learned import build_teacher, mean_kl
from dppa_peft.demo.zoo import build_zoo
from dppa_peft.evaluation.ratios import domain_ratio
from dppa_peft.evaluation.tasks import task_manager
from dppa_peft.amplify.api import prune_and_amplify

PARTITIONS = [0.99, 0.97, 0.94, 0.9]  # the learned merge's (demo lineup: the top 1% of the weights, next 2%, 3%, 4%)
SETTINGS = {
    "rows, 60 steps (library default)": {"learn_steps": 60},
    "rows, 200 steps": {"learn_steps": 200},
    "rows + dense, 60 steps": {"learn_steps": 60, "learn_dense": True},
    "rows + dense, 200 steps": {"learn_steps": 200, "learn_dense": True},
    "rows + dense, 4 partitions, 200 steps": {"learn_steps": 200, "learn_dense": True, "partition_rates": PARTITIONS},
    "rows, 4 partitions, 200 steps": {"learn_steps": 200, "partition_rates": PARTITIONS},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "dppa-peft" / "zoo"))
    parser.add_argument("--rate", type=float, default=0.9)
    parser.add_argument("--domains", nargs="+", help="default: every domain of the zoo")
    parser.add_argument(
        "--calibration-prompts",
        type=int,
        default=400,
        help="prompts per domain to learn on: the learning fold's dev docs plus prompts drawn from the task "
        "generators (never a dev or test prompt) up to this many (default: 400, the demo's)",
    )
    parser.add_argument("--settings", help="JSON object: name -> learned-amplification options (default: SETTINGS)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = json.loads(args.settings) if args.settings else SETTINGS
    zoo = build_zoo(args.cache_dir)
    domains = args.domains or list(zoo.finetunes)
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    manager = task_manager()
    work = Path(tempfile.mkdtemp(prefix="learn_dev-"))
    calibration, dense, heldout = {}, {}, {}
    for domain in domains:
        finetuned = AutoModelForCausalLM.from_pretrained(zoo.finetunes[domain])
        for fold in FOLDS:
            calibration[domain, fold] = write_learning_file(
                work / f"{domain}-{fold}.jsonl", domain, fold, args.calibration_prompts
            )
            dense[domain, fold] = score(finetuned, tokenizer, manager, domain, fold)
            heldout[domain, fold] = build_teacher(finetuned, tokenizer, heldout_prompts(domain, fold), heldout=0.01)
    results: dict[str, dict] = {}
    for name, options in settings.items():
        per, kls, seconds = {d: [] for d in domains}, {d: [] for d in domains}, 0.0
        for domain in domains:
            for fold in FOLDS:
                started = time.perf_counter()
                adapter = prune_and_amplify(
                    zoo.base,
                    zoo.finetunes[domain],
                    work / "adapter",
                    method="magnitude",
                    rate=args.rate,
                    search="learned",
                    calibration=calibration[domain, fold],
                    overwrite=True,
                    progress=False,
                    **options,
                )[0]
                seconds += time.perf_counter() - started
                model = load_merged(zoo.base, [adapter], progress=False)
                got = score(model, tokenizer, manager, domain, fold)
                per[domain].append(100 * domain_ratio([got[t] / dense[domain, fold][t] for t in got]))
                kls[domain].append(mean_kl(model, heldout[domain, fold].train + heldout[domain, fold].heldout))
        results[name] = r = summary(options, per, kls, seconds / (len(domains) * len(FOLDS)))
        print(json.dumps({name: r}), flush=True)
    report(results, domains, "s / model", args.json)


if __name__ == "__main__":
    main()
