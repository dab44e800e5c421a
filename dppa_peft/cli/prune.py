"""``dppa-peft prune``: two checkpoints -> a sparse delta adapter folder (options generated from ``PruneSpec``)."""

from __future__ import annotations

import argparse

from ..prune.spec import DPPA, PruneSpec
from .common import add_spec_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..methods.registry import METHODS

    methods = ", ".join(sorted(METHODS))
    add_spec_command(
        sub,
        "prune",
        PruneSpec,
        run=run,
        help="prune a fine-tune's delta into a sparse delta adapter",
        description=f"Compute delta = finetuned - base tensor by tensor (fp32), prune it and write a PEFT adapter "
        f"folder (adapter_config.json, adapter_model.safetensors, README.md). Methods: {methods} (their "
        f"options are listed under each method); {DPPA}: dp, then DPA (Dynamic Partition Amplification).",
    )


def run(spec: PruneSpec, args: argparse.Namespace) -> None:
    from ..prune.api import prune, prune_and_amplify
    from .amplify import describe_search

    if not spec.amplify:
        adapter, summary = prune(spec, command=args.command_line)
        print(f"wrote {adapter.directory}: {summary.line()}")
        return
    adapter, summary, result = prune_and_amplify(spec, command=args.command_line)
    print(
        f"wrote {adapter.directory}: {summary.line()}\n"
        f"{describe_search(result, (adapter.config.amplification or {})['raw_factors'])}"
    )
