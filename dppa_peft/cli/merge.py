"""``dppa-peft merge``: a base plus N adapters -> a dense model folder (``--out``) and/or a merged sparse adapter
(``--out-adapter``); ``--from-record`` replays a recorded merge. Options generated from ``MergeSpec``."""

from __future__ import annotations

import argparse
import time

from ..merge.spec import MergeSpec
from .common import add_spec_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_spec_command(
        sub,
        "merge",
        MergeSpec,
        run=run,
        help="merge adapters into their base: a dense model folder and/or one merged sparse adapter",
        description="Combine the sparse deltas of N adapters with a merge mode and write a dense model folder "
        "(--out: safetensors shards, config, tokenizer, a model card and dppa_merge.json, the record of "
        "the merge) and/or one merged sparse adapter (--out-adapter: union support, loads like any "
        "adapter). --from-record replays a recorded merge to identical weights.",
    )


def run(spec: MergeSpec, args: argparse.Namespace) -> None:
    from ..merge.api import merge

    start = time.perf_counter()
    for output in merge(spec, command=getattr(args, "command_line", None)):
        seconds = time.perf_counter() - start
        if spec.from_record:
            print(f"wrote {output.path}: replayed {spec.from_record} as a {output.kind}")
        elif output.kind == "model":
            size = sum(p.stat().st_size for p in output.path.glob("*.safetensors"))
            print(
                f"wrote {output.path}: {len(spec.adapters)} adapter(s) merged with mode '{spec.mode}', "
                f"{size / 2**20:.2f} MiB of weights, {seconds:.1f} s"
            )
        else:
            size = sum(p.stat().st_size for p in output.path.glob("*.safetensors"))
            print(
                f"wrote {output.path}: merged adapter ({spec.mode}) of {len(spec.adapters)} adapter(s), "
                f"{size / 2**20:.2f} MiB, {seconds:.1f} s"
            )
