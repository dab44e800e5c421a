"""Choose the demo's single-adapter learned-amplification setting on the dev split only (never the test split).

The protocol of ``merge_dev.py`` for one adapter at a time (``_dev.py``: two folds of the dev docs). Each domain
fine-tune of the demo zoo is pruned once (magnitude, ``--rate``). Fold k: each candidate setting learns the adapter's
factors from its dense fine-tune on the learning fold's prompts (topped up to ``--calibration-prompts`` per domain
from the task generators, as the demo does); the amplified model is scored on the held-out fold: Domain-Ratio (paper
eq. 8, vs the dense fine-tune on the same docs) and KL(dense fine-tune ‖ amplified) per position. Printed per
setting: the mean of the two folds per domain, and the learning time per adapter (``amplify``).

    OMP_NUM_THREADS=1 python bench/learn_dev.py               # the settings of default_settings, 400 prompts
    python bench/learn_dev.py --settings '{"rows": {"learn_steps": 60}}' --json out.json
"""

from __future__ import annotations

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

from _dev import FOLDS, dev_parser, heldout_prompts, report, score, summary, write_learning_file
from dppa_peft import amplify, load_merged, prune
from dppa_peft.amplify.learned import build_teacher, mean_kl
from dppa_peft.demo.lineup import LEARNED_SHARES, partition_rates
from dppa_peft.demo.zoo import build_zoo
from dppa_peft.lmeval.ratios import domain_ratio
from dppa_peft.lmeval.tasks import task_manager


def default_settings(rate: float) -> dict[str, dict]:
    """The candidates the demo's setting was chosen from (README, "Learned amplification"), at ``rate``."""
    partitions = partition_rates(rate, LEARNED_SHARES)  # the demo lineup's: the top 10% of the kept entries, ...
    return {
        "rows, 60 steps (library default)": {"learn_steps": 60},
        "rows, 200 steps": {"learn_steps": 200},
        "rows + dense, 60 steps": {"learn_steps": 60, "learn_dense": True},
        "rows + dense, 200 steps": {"learn_steps": 200, "learn_dense": True},
        "rows + dense, 4 partitions, 200 steps": {
            "learn_steps": 200,
            "learn_dense": True,
            "partition_rates": partitions,
        },
        "rows, 4 partitions, 200 steps": {"learn_steps": 200, "partition_rates": partitions},
    }


def main() -> None:
    parser = dev_parser(__doc__, "learned-amplification", calibration_default=400)
    parser.add_argument("--domains", nargs="+", help="default: every domain of the zoo")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = json.loads(args.settings) if args.settings else default_settings(args.rate)
    zoo = build_zoo(args.cache_dir)
    domains = args.domains or list(zoo.finetunes)
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    manager = task_manager()
    work = Path(tempfile.mkdtemp(prefix="learn_dev-"))
    calibration, pruned, dense, heldout = {}, {}, {}, {}
    for domain in domains:
        finetuned = AutoModelForCausalLM.from_pretrained(zoo.finetunes[domain])
        pruned[domain] = prune(
            zoo.base, zoo.finetunes[domain], work / domain, method="magnitude", rate=args.rate, progress=False
        )[0]
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
                adapter = amplify(
                    pruned[domain],
                    work / "adapter",
                    finetuned=zoo.finetunes[domain],
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
