"""DPA factor search: the default golden-section search vs the released +0.1 greedy loop (``search="reference"``).

For each strategy and DPA method: objective calls, search wall time, the chosen factors, the score on the search
split, and the score on a held-out split (never used by the search). The adapter is pruned once with partitions;
every search reuses one in-place candidate model, so the times are objective calls plus in-place updates.

    python bench/dpa_search.py                       # tiny models built here (char-level arithmetic fine-tune)
    python bench/dpa_search.py --base B --finetuned F --calibration dev.jsonl --heldout test.jsonl [--method dp]
    python bench/dpa_search.py --base B --finetuned F --objective tasks --include-path eval_tasks/synthetic \\
        --tasks math_dev --heldout-tasks math_test        # Domain-Ratio on lm-eval dev / test splits

With ``--objective kl`` the scores are −KL(dense fine-tune ‖ candidate) (0 is the fine-tune itself); with
``--objective tasks`` they are Domain-Ratios (1.0 = as good as the dense fine-tune).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from _common import print_table  # noqa: E402
from dppa_peft import prune  # noqa: E402
from dppa_peft.amplify.candidate import AmplifiedModel, load_base_model  # noqa: E402
from dppa_peft.amplify.objectives import ObjectiveParams, build_objective  # noqa: E402
from dppa_peft.format.partitions import adapter_partitions  # noqa: E402
from dppa_peft.methods.partitions import default_partition_rates  # noqa: E402
from dppa_peft.amplify.search import default_bounds, search_factors  # noqa: E402
from dppa_peft.methods import METHODS  # noqa: E402


def arithmetic_texts(count: int, seed: int) -> list[str]:
    """Lines like ``12+7=19;3*4=12`` (the tiny fine-tune's domain)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        parts = []
        for _ in range(3):
            a, b, op = rng.randint(0, 20), rng.randint(0, 20), rng.choice("+-*")
            parts.append(f"{a}{op}{b}={eval(f'{a}{op}{b}')}")
        lines.append(";".join(parts))
    return lines


def build_tiny_pair(root: Path, layers: int, steps: int) -> tuple[Path, Path, Path, Path]:
    """A tiny Llama base, a fine-tune of it on arithmetic text, and search / held-out prompt files."""
    from tests.tiny_models import make_base, make_tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_base(root / "base", layers=layers)
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer(root / "finetuned"))
    model = AutoModelForCausalLM.from_pretrained(base)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    texts = arithmetic_texts(steps * 8, seed=0)
    for step in range(steps):
        batch = tokenizer(texts[step * 8 : (step + 1) * 8], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(root / "finetuned")
    files = []
    for name, seed in (("search.txt", 1), ("heldout.txt", 2)):
        path = root / name
        path.write_text("\n".join(text[:12] for text in arithmetic_texts(32, seed)) + "\n")
        files.append(path)
    return base, root / "finetuned", files[0], files[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="base model folder (default: build tiny models)")
    parser.add_argument("--finetuned", help="fine-tuned model folder")
    parser.add_argument("--calibration", help="kl: search-split prompts (.jsonl with 'text', or one per line)")
    parser.add_argument("--heldout", help="kl: held-out prompts, never seen by the search")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the fine-tune's, else the base's)")
    parser.add_argument("--objective", default="kl", choices=["kl", "tasks"], help="search objective")
    parser.add_argument("--tasks", nargs="+", help="tasks: lm-eval dev-split tasks the search uses")
    parser.add_argument("--heldout-tasks", nargs="+", help="tasks: lm-eval test-split tasks for the report")
    parser.add_argument("--include-path", nargs="+", help="tasks: lm-eval task folders")
    parser.add_argument("--method", default="dp" if "dp" in METHODS else "magnitude", help="nested pruning method")
    parser.add_argument("--rate", type=float, default=0.8, help="target pruning rate (0.8: partitions 0.9, 0.8)")
    parser.add_argument("--layers", type=int, default=4, help="tiny models: decoder blocks")
    parser.add_argument("--steps", type=int, default=60, help="tiny models: fine-tuning steps")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.base is None:
            base, finetuned, calibration, heldout = build_tiny_pair(root, args.layers, args.steps)
        else:
            base, finetuned, calibration, heldout = args.base, args.finetuned, args.calibration, args.heldout
        adapter = prune(
            base,
            finetuned,
            root / "adapter",
            method=args.method,
            rate=args.rate,
            partition_rates=default_partition_rates(args.rate),
            progress=False,
        )[0]
        common = dict(
            objective=args.objective,
            tokenizer=args.tokenizer,
            include_path=args.include_path,
            continuation_tokens=4,
            max_length=64,
        )
        search_objective = build_objective(
            ObjectiveParams(calibration=calibration and str(calibration), tasks=args.tasks, **common), finetuned, base
        )
        heldout_objective = build_objective(
            ObjectiveParams(calibration=heldout and str(heldout), tasks=args.heldout_tasks, split="test", **common),
            finetuned,
            base,
        )
        partitions = adapter_partitions(adapter)
        candidate = AmplifiedModel(load_base_model(base, adapter), adapter, partitions)
        bounds = default_bounds(bool(adapter.config.method["params"].get("rescale", False)))
        rows = [
            {
                "strategy": "none (factors 1)",
                "dpa_method": "-",
                "calls": 0,
                "seconds": 0.0,
                "factors": [1.0] * partitions.count,
            }
        ]
        for strategy in ("default", "reference"):
            for dpa_method in (1, 2):
                result = search_factors(
                    lambda f: search_objective(candidate.apply(f)),
                    partitions.count,
                    strategy,
                    dpa_method,
                    bounds=bounds,
                    progress=False,
                )
                rows.append(
                    {
                        "strategy": strategy,
                        "dpa_method": dpa_method,
                        "calls": result.calls,
                        "seconds": result.seconds,
                        "factors": result.factors,
                    }
                )
        for row in rows:
            model = candidate.apply(row["factors"])
            row["search_score"] = search_objective(model)
            row["heldout_score"] = heldout_objective(model)

    print(
        f"method {args.method}, rate {args.rate}, partitions {partitions.rates}, objective {args.objective}, "
        f"bounds {list(bounds)}, torch threads {torch.get_num_threads()}"
    )
    columns = ["strategy", "DPA method", "calls", "search s", "factors", "search score", "held-out score"]
    cells = [
        [r["strategy"], r["dpa_method"], r["calls"], f"{r['seconds']:.2f}", r["factors"], f"{r['search_score']:.5f}"]
        + [f"{r['heldout_score']:.5f}"]
        for r in rows
    ]
    print_table(columns, cells, args.json, rows)


if __name__ == "__main__":
    main()
