"""Choose the demo's learned-merge setting on the dev split only: two folds of the dev docs, never the test split.

The protocol is ``_dev.py``'s. Fold k (k = 0, 1): every domain fine-tune of the demo zoo is pruned (magnitude,
``--rate``) and amplified by learned amplification as the demo's magnitude+learned variant (200 steps, four magnitude
partitions) on the dev docs with index % 2 != k of each task; the three adapters are merged with
``merge --mode learned`` and each candidate setting, learning on the same prompts; the merged model is scored on the
dev docs with index % 2 == k, which no learning saw: Domain-Ratio (paper eq. 8, vs the dense fine-tune on the same
docs) and KL(dense fine-tune ‖ merged) per position. Printed per setting: the mean of the two folds per domain.
``--calibration-prompts N`` tops each learning fold up to N prompts per domain with prompts drawn from the task
generators (``dppa_peft.demo.calibration``: never a dev or test prompt, checked), as the demo does with its dev docs.

    OMP_NUM_THREADS=1 python bench/merge_dev.py                           # the settings of default_settings
    python bench/merge_dev.py --calibration-prompts 400   # learn on 400 prompts per domain (the demo's calibration)
    python bench/merge_dev.py --settings '{"rows": {"learn_steps": 200, "learn_dense": false}}' --json out.json
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
from dppa_peft import load_merged
from dppa_peft.prune.api import prune_and_amplify
from dppa_peft.amplify.learned import build_teacher, mean_kl
from dppa_peft.demo.lineup import LEARNED_SHARES, PRUNE_VARIANTS, partition_rates
from dppa_peft.demo.runner import DemoSettings
from dppa_peft.demo.zoo import build_zoo
from dppa_peft.lmeval.ratios import domain_ratio
from dppa_peft.lmeval.tasks import task_manager
from dppa_peft.merge.learned import LearnedMergeParams, learn_merge
from dppa_peft.publish.adapter import open_adapter


def default_settings(rate: float) -> dict[str, dict]:
    """What the demo's learned merge was chosen from (README, "What it shows"), for adapters pruned at ``rate``."""
    return {
        "rows (before)": {"learn_steps": 200, "learn_dense": False},
        "rows + dense": {"learn_steps": 200},
        "rows + dense, 4 partitions (demo)": {
            "learn_steps": 200,
            "learn_partition_rates": partition_rates(rate, LEARNED_SHARES),
        },
    }


def main() -> None:
    args = dev_parser(__doc__, "learned-merge", calibration_default=None).parse_args()
    torch.set_num_threads(1)
    settings = json.loads(args.settings) if args.settings else default_settings(args.rate)
    zoo = build_zoo(args.cache_dir)
    domains = list(zoo.finetunes)
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    manager = task_manager()
    work = Path(tempfile.mkdtemp(prefix="merge_dev-"))
    calibration, adapters, dense, heldout = {}, {}, {}, {}
    for domain in domains:
        finetuned = AutoModelForCausalLM.from_pretrained(zoo.finetunes[domain])
        for fold in FOLDS:
            path = write_learning_file(work / f"{domain}-{fold}.jsonl", domain, fold, args.calibration_prompts)
            calibration[domain, fold] = path
            adapters[domain, fold] = open_adapter(
                prune_and_amplify(
                    zoo.base,
                    zoo.finetunes[domain],
                    work / f"{domain}-{fold}",
                    method="magnitude",
                    rate=args.rate,
                    search="learned",
                    calibration=path,
                    progress=False,
                    learn_steps=DemoSettings().learn_steps,  # the demo's magnitude+learned adapters
                    **PRUNE_VARIANTS["magnitude+learned"].params(args.rate),
                )[0].directory
            )
            dense[domain, fold] = score(finetuned, tokenizer, manager, domain, fold)
            teacher = build_teacher(finetuned, tokenizer, heldout_prompts(domain, fold), heldout=0.01)
            heldout[domain, fold] = teacher.train + teacher.heldout
    results: dict[str, dict] = {}
    for name, options in settings.items():
        started, per = time.perf_counter(), {d: [] for d in domains}
        kls = {d: [] for d in domains}
        for fold in FOLDS:
            params = LearnedMergeParams(calibration=[calibration[d, fold] for d in domains], **options)
            factored, _ = learn_merge(zoo.base, [adapters[d, fold] for d in domains], [1.0] * 3, params, progress=False)
            merged = load_merged(zoo.base, factored, progress=False)
            for d in domains:
                got = score(merged, tokenizer, manager, d, fold)
                per[d].append(100 * domain_ratio([got[t] / dense[d, fold][t] for t in got]))
                kls[d].append(mean_kl(merged, heldout[d, fold]))
        results[name] = r = summary(options, per, kls, time.perf_counter() - started)
        print(json.dumps({name: r}), flush=True)
    report(results, domains, "s", args.json)


if __name__ == "__main__":
    main()
