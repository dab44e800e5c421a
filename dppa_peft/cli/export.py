"""``dppa-peft export``: write an adapter in another format (stock PEFT's SUPERTUNING) to a local folder (options
generated from ``ExportSpec``)."""

from __future__ import annotations

import argparse

from ..publish.spec import ExportSpec
from .common import add_spec_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_spec_command(
        sub,
        "export",
        ExportSpec,
        run=run,
        help="export an adapter to a folder that stock PEFT loads without dppa-peft",
        description="'supertuning' writes PEFT's built-in sparse tuner format (fp32 values + int32 indices, one "
        "global sparsity, zero-padded; embeddings, norms and biases as modules_to_save): "
        "PeftModel.from_pretrained and transformers' load_adapter load it exactly, without dppa-peft. "
        "It is larger than the sparse-delta format and needs the base checkpoint. 'sparse-delta' copies "
        "the adapter as is (e.g. a Hub id to a local folder).",
    )


def run(spec: ExportSpec, args: argparse.Namespace) -> None:
    from ..publish.api import export
    from ..publish.stock import SupertuningExport

    written = export(spec)
    if isinstance(written, SupertuningExport):
        print(f"wrote {written.directory}: {written.line()}")
    else:
        print(f"wrote {written.directory}: {written.nbytes / 2**20:.2f} MiB (sparse-delta)")
