"""``dppa-peft push``: publish an adapter on the Hub as one commit (options generated from ``PushSpec``)."""

from __future__ import annotations

import argparse

from ..publish.spec import PushSpec
from .common import add_spec_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_spec_command(
        sub,
        "push",
        PushSpec,
        run=run,
        help="publish an adapter on the Hugging Face Hub (one commit: adapter files and model card)",
        description="Create the repo if needed (and the branch named by --revision), then upload adapter_config.json, "
        "adapter_model.safetensors and a model card in ONE commit. The token comes from HF_TOKEN or "
        "`hf auth login` (never printed); the endpoint from HF_ENDPOINT. If the connection breaks, "
        "nothing is half-published and re-running the same command is safe.",
    )


def run(spec: PushSpec, args: argparse.Namespace) -> None:
    from ..publish.api import push

    info = push(spec)
    print(
        f"pushed {spec.adapter} to {spec.repo_id}@{spec.revision or 'main'} as {spec.export_format}: commit {info.oid}"
    )
    print(info.pr_url or info.commit_url)
