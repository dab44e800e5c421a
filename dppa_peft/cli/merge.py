"""``dppa-peft merge``: a base plus N adapters -> one dense model folder (options generated from ``MergeSpec``)."""

from __future__ import annotations

import argparse
import time

from ..specs import MergeSpec
from .common import add_spec_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_spec_command(
        sub, "merge", MergeSpec, run=run, help="merge one or more adapters into their base and write a dense model "
                                               "folder",
        description="Stream the base checkpoint tensor by tensor, add the combined adapter deltas "
                    "(W = W_B + sum_i w_i * delta_i by default) and write safetensors shards, config, generation "
                    "config and tokenizer files that AutoModelForCausalLM.from_pretrained loads.",
    )


def run(spec: MergeSpec, args: argparse.Namespace) -> None:
    from ..merge import merge_to_folder

    start = time.perf_counter()
    out = merge_to_folder(spec)
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"wrote {out}: {len(spec.adapters)} adapter(s) merged with mode '{spec.mode}', "
          f"{size / 2**20:.2f} MiB of weights, {time.perf_counter() - start:.1f} s")
