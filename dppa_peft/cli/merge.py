"""``dppa-peft merge``: a base plus N adapters -> one dense model folder that transformers loads."""

from __future__ import annotations

import argparse
import time

import torch

from ..merge import COMBINE_MODES, merge_to_folder
from ..merge.combine import CONSENSUS, SEMANTICS

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "merge", help="merge one or more adapters into their base and write a dense model folder",
        description="Stream the base checkpoint tensor by tensor, add the combined adapter deltas "
                    "(W = W_B + sum_i w_i * delta_i by default) and write safetensors shards, config, generation "
                    "config and tokenizer files that AutoModelForCausalLM.from_pretrained loads.",
    )
    parser.add_argument("--base", required=True, help="base model: local folder or Hub id")
    parser.add_argument("--adapter", action="append", required=True,
                        help="adapter folder or Hub id; repeat for several adapters")
    parser.add_argument("--weight", action="append", type=float, default=None,
                        help="weight w_i of each adapter, in --adapter order (default 1.0 each)")
    parser.add_argument("--adapter-revision", action="append", default=None,
                        help="Hub revision of each adapter, in --adapter order (repeat once per --adapter)")
    parser.add_argument("--mode", default="sum", choices=sorted(COMBINE_MODES),
                        help="how deltas combine: 'sum' (default: W_B + sum_i w_i delta_i) or 'ties' (sign election "
                             "on the weighted deltas, disjoint mean over the agreeing ones)")
    parser.add_argument("--consensus", choices=CONSENSUS, default=None,
                        help="ties: elect the sign by the weighted 'sum' (default) or by 'count' of signs")
    parser.add_argument("--semantics", choices=SEMANTICS, default=None,
                        help="ties: 'mergekit' (default: elect on weighted deltas, divide by the agreeing weights) or "
                             "'peft' (elect on unweighted deltas, divide by the agreeing count)")
    parser.add_argument("--out", required=True, help="output model folder (written atomically)")
    parser.add_argument("--dtype", default="auto", choices=sorted(DTYPES),
                        help="dtype of the written weights; 'auto' keeps each base tensor's dtype (default)")
    parser.add_argument("--base-revision", "--revision", dest="revision", default=None,
                        help="revision (branch, tag or commit sha) of the base model on the Hub")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--allow-unverified-base", action="store_true",
                        help="merge adapters that record no base fingerprint (refused by default: nothing would check "
                             "that they fit this base)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    options = {k: getattr(args, k) for k in ("consensus", "semantics") if getattr(args, k) is not None}
    if options and args.mode != "ties":
        raise ValueError(f"--{' --'.join(options)} only apply to --mode ties")
    out = merge_to_folder(args.base, args.adapter, args.out, weights=args.weight, mode=args.mode,
                          revision=args.revision, adapter_revisions=args.adapter_revision, dtype=DTYPES[args.dtype],
                          overwrite=args.overwrite, allow_unverified_base=args.allow_unverified_base, **options)
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"wrote {out}: {len(args.adapter)} adapter(s) merged with mode '{args.mode}', "
          f"{size / 2**20:.2f} MiB of weights, {time.perf_counter() - start:.1f} s")
