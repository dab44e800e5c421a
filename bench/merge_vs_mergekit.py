"""TIES-merge two fine-tunes: dppa-peft (prune to adapters, then merge) vs mergekit (`ties`), same models, one run.

Peer: mergekit 0.1.5 (`pip install -e ".[bench]"`). Both keep the top 10% |delta| of every tensor, elect signs on
the weighted sum and take the disjoint mean over the agreeing models (mergekit semantics), so their outputs are
compared tensor by tensor. Prints wall time and peak anonymous memory of each, their ratios, the adapter sizes and
the largest output difference.

    python bench/merge_vs_mergekit.py [--layers 8] [--hidden 512] [--density 0.1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from _common import folder_mib, make_finetune, make_llama, measure

SETUP = "import torch, transformers, peft, dppa_peft"
MERGEKIT_SETUP = "import torch, transformers, mergekit.merge, mergekit.config, yaml"


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8, help="decoder blocks of the synthetic Llama (default 8)")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size (default 512)")
    parser.add_argument("--density", type=float, default=0.1, help="kept fraction per tensor (default 0.1)")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "float32"],
        help="checkpoint dtype (default bfloat16; float32 has no ties, so outputs match exactly)",
    )
    args = parser.parse_args()
    rate = 1.0 - args.density
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_llama(root / "base", layers=args.layers, hidden=args.hidden, dtype=getattr(torch, args.dtype))
        fts = [make_finetune(base, root / f"ft{i}", scale=0.002, seed=i + 1) for i in range(2)]
        config = {
            "merge_method": "ties",
            "base_model": str(base),
            "dtype": args.dtype,
            "parameters": {"normalize": True},
            "models": [{"model": str(ft), "parameters": {"density": args.density, "weight": 1.0}} for ft in fts],
        }
        (root / "ties.yml").write_text(yaml.safe_dump(config))
        baseline = {
            "mergekit": measure("", setup=MERGEKIT_SETUP)["peak_anon_mib"],
            "ours": measure("", setup=SETUP)["peak_anon_mib"],
        }
        mergekit = measure(
            f"""
            config = mergekit.config.MergeConfiguration.model_validate(yaml.safe_load(open({str(root / "ties.yml")!r})))
            mergekit.merge.run_merge(config, {str(root / "mk")!r},
                                     mergekit.merge.MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
        """,
            setup=MERGEKIT_SETUP,
        )
        prune = measure(
            f"""
            for i, ft in enumerate({[str(f) for f in fts]!r}):
                dppa_peft.prune({str(base)!r}, ft, {str(root)!r} + f"/a{{i}}", method="ties", rate={rate},
                                outside_scope="magnitude", progress=False)
        """,
            setup=SETUP,
        )
        merge = measure(
            f"""
            dppa_peft.merge_to_folder({str(base)!r}, [{str(root / "a0")!r}, {str(root / "a1")!r}], {str(root / "ours")!r},
                                      mode="ties", progress=False)
        """,
            setup=SETUP,
        )
        theirs, ours = load_all(root / "mk"), load_all(root / "ours")
        base_w = load_all(base)
        differing = sum(int((ours[n] != theirs[n]).sum()) for n in theirs) / sum(t.numel() for t in theirs.values())
        delta_err = sum(float((ours[n].float() - theirs[n].float()).norm() ** 2) for n in theirs) ** 0.5
        delta_norm = sum(float((theirs[n].float() - base_w[n].float()).norm() ** 2) for n in theirs) ** 0.5
        adapters = folder_mib(root / "a0") + folder_mib(root / "a1")
        dense_ft = folder_mib(fts[0]) + folder_mib(fts[1])
        model_mib = folder_mib(base)
    total = prune["seconds"] + merge["seconds"]
    print(
        f"synthetic Llama: {args.layers} blocks, hidden {args.hidden}, {model_mib:.0f} MiB {args.dtype}; density {args.density}"
    )
    print("| run | wall s | peak anon MiB above imports |")
    print("|---|---|---|")
    print(
        f"| mergekit ties (from the two dense fine-tunes) | {mergekit['seconds']:.2f} | {mergekit['peak_anon_mib'] - baseline['mergekit']:.0f} |"
    )
    print(
        f"| dppa-peft prune x2 (ties trim) | {prune['seconds']:.2f} | {prune['peak_anon_mib'] - baseline['ours']:.0f} |"
    )
    print(
        f"| dppa-peft merge_to_folder (ties, from adapters) | {merge['seconds']:.2f} | {merge['peak_anon_mib'] - baseline['ours']:.0f} |"
    )
    print(
        f"time ratio dppa-peft prune+merge / mergekit: {total / mergekit['seconds']:.2f}x; "
        f"merge from adapters / mergekit: {merge['seconds'] / mergekit['seconds']:.2f}x"
    )
    ours_peak, theirs_peak = merge["peak_anon_mib"] - baseline["ours"], mergekit["peak_anon_mib"] - baseline["mergekit"]
    print(f"peak memory ratio (above imports) merge / mergekit: {ours_peak / theirs_peak:.2f}x")
    print(
        f"inputs a consumer downloads: 2 adapters {adapters:.1f} MiB vs 2 dense fine-tunes {dense_ft:.1f} MiB "
        f"({adapters / dense_ft:.1%})"
    )
    print(
        f"outputs: {differing:.3%} of entries differ; |ours - mergekit| / |merged delta| = {delta_err / delta_norm:.3%} "
        "(bf16 deltas tie massively at the top-k threshold: broken by index here, arbitrarily by mergekit)"
    )


if __name__ == "__main__":
    main()
