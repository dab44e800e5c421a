"""``dppa-peft export``: write an adapter in another format (stock PEFT's SUPERTUNING) to a local folder."""

from __future__ import annotations

import argparse

from ..choices import EXPORT_FORMATS


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export an adapter to a folder that stock PEFT loads without dppa-peft",
        description="'supertuning' writes PEFT's built-in sparse tuner format (fp32 values + int32 indices, one "
        "global sparsity, zero-padded; embeddings, norms and biases as modules_to_save): "
        "PeftModel.from_pretrained and transformers' load_adapter load it exactly, without dppa-peft. "
        "It is larger than the sparse-delta format and needs the base checkpoint. 'sparse-delta' copies "
        "the adapter as is (e.g. a Hub id to a local folder).",
    )
    parser.add_argument("adapter", metavar="DIR", help="adapter folder written by `dppa-peft prune` (or a Hub id)")
    parser.add_argument("out", metavar="OUT", help="output folder (written atomically)")
    parser.add_argument(
        "--format",
        dest="export_format",
        default="supertuning",
        choices=EXPORT_FORMATS,
        help="output format (default: supertuning)",
    )
    parser.add_argument("--adapter-revision", default=None, help="Hub revision of DIR when it is a Hub id")
    parser.add_argument(
        "--base",
        default=None,
        help="the adapter's base model, folder or Hub id (default: the base recorded in the adapter)",
    )
    parser.add_argument("--base-revision", default=None, help="Hub revision of --base")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..format.io import SparseDeltaAdapter
    from ..publish.export import export_supertuning

    adapter = SparseDeltaAdapter.from_pretrained(args.adapter, revision=args.adapter_revision)
    if args.export_format == "sparse-delta":
        out = adapter.save_pretrained(args.out, overwrite=args.overwrite)
        print(f"wrote {out}: {adapter.nbytes / 2**20:.2f} MiB (sparse-delta)")
        return
    export = export_supertuning(
        adapter, args.out, base=args.base, base_revision=args.base_revision, overwrite=args.overwrite
    )
    print(f"wrote {export.directory}: {export.line()}")
