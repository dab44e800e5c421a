"""``dppa-peft merge``: a base plus N adapters -> a dense model folder (``--out``) and/or a merged sparse adapter
(``--out-adapter``); ``--from-record`` replays a recorded merge."""

from __future__ import annotations

import argparse
import time

from ..merge import MERGE_MODES, create_mode, merge_to_adapter, merge_to_folder, replay
from ..pipeline import VALUE_DTYPES
from .common import add_dataclass_options, given_options

ADAPTER_DTYPES = ("float32", "bfloat16", "float16")
_ACCEPTED: dict[str, list[str]] = {}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "merge", help="merge adapters into their base: a dense model folder and/or one merged sparse adapter",
        description="Combine the sparse deltas of N adapters with a merge mode and write a dense model folder "
                    "(--out: safetensors shards, config, tokenizer, a model card and dppa_merge.json, the record of "
                    "the merge) and/or one merged sparse adapter (--out-adapter: union support, loads like any "
                    "adapter). --from-record replays a recorded merge to identical weights.",
    )
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--base", help="base model: local folder or Hub id")
    inputs.add_argument("--adapter", action="append", help="adapter folder or Hub id; repeat for several adapters")
    inputs.add_argument("--weight", action="append", type=float, default=None,
                        help="weight w_i of each adapter, in --adapter order (default 1.0 each)")
    inputs.add_argument("--adapter-revision", action="append", default=None,
                        help="Hub revision of each adapter, in --adapter order (repeat once per --adapter)")
    inputs.add_argument("--base-revision", "--revision", dest="revision", default=None,
                        help="revision (branch, tag or commit sha) of the base model on the Hub")
    inputs.add_argument("--from-record", metavar="FILE", default=None,
                        help="replay a recorded merge: a dppa_merge.json, a merged model folder or a merged adapter "
                             "(replaces --base/--adapter/--weight/--mode and the mode options)")
    outputs = parser.add_argument_group("outputs (at least one)")
    outputs.add_argument("--out", default=None, help="output dense model folder (written atomically)")
    outputs.add_argument("--out-adapter", default=None, help="output merged sparse adapter folder (written atomically)")
    outputs.add_argument("--dtype", default="auto", choices=sorted(VALUE_DTYPES),
                         help="--out: dtype of the written weights and of config.json; 'auto' keeps each base "
                              "tensor's dtype (default)")
    outputs.add_argument("--value-dtype", default="float32", choices=ADAPTER_DTYPES,
                         help="--out-adapter: dtype of the stored values (default float32: exact)")
    outputs.add_argument("--overwrite", action="store_true", help="replace the output folders if they exist")
    inputs.add_argument("--allow-unverified-base", action="store_true",
                        help="merge adapters that record no base fingerprint (refused by default: nothing would check "
                             "that they fit this base)")
    inputs.add_argument("--device", default="cpu",
                        help="learned modes (learned, adamerging): device the factors are learned on, e.g. cuda "
                             "(default cpu)")
    modes = parser.add_argument_group("merge mode")
    modes.add_argument("--mode", default="sum", choices=sorted(MERGE_MODES), help="; ".join(
        f"{name}: {cls.summary}" for name, cls in sorted(MERGE_MODES.items()) if name == cls.name))
    _ACCEPTED.update(add_dataclass_options(modes, {name: cls.Params for name, cls in MERGE_MODES.items()
                                                   if name == cls.name}))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if not (args.out or args.out_adapter):
        raise ValueError("pass --out (a model folder), --out-adapter (a merged adapter) or both")
    command = getattr(args, "command_line", None)
    if args.from_record:
        given = [flag for flag, value in (("--base", args.base), ("--adapter", args.adapter), ("--weight", args.weight))
                 if value]
        if given:
            raise ValueError(f"--from-record replays the recorded inputs; drop {', '.join(given)}")
        outputs = [(out, kind) for out, kind in ((args.out, "model"), (args.out_adapter, "adapter")) if out]
        for out, kind in outputs:
            replay(args.from_record, out, output=kind, overwrite=args.overwrite, command=command,
                   allow_unverified_base=args.allow_unverified_base)
            print(f"wrote {out}: replayed {args.from_record} as a {kind}")
        return
    if not args.base or not args.adapter:
        raise ValueError("pass --base and at least one --adapter (or --from-record FILE)")
    canonical = MERGE_MODES[args.mode].name
    merger = create_mode(args.mode, **given_options(args, _ACCEPTED, canonical, "merge mode"))  # checked up front;
    common = dict(weights=args.weight, mode=merger, revision=args.revision,  # one instance: a learned mode learns once
                  adapter_revisions=args.adapter_revision, overwrite=args.overwrite, command=command,
                  allow_unverified_base=args.allow_unverified_base, device=args.device)
    if args.out:
        out = merge_to_folder(args.base, args.adapter, args.out, dtype=args.dtype, **common)
        size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        print(f"wrote {out}: {len(args.adapter)} adapter(s) merged with mode '{canonical}', "
              f"{size / 2**20:.2f} MiB of weights, {time.perf_counter() - start:.1f} s")
    if args.out_adapter:
        adapter = merge_to_adapter(args.base, args.adapter, args.out_adapter, value_dtype=args.value_dtype, **common)
        print(f"wrote {adapter.directory}: merged adapter ({canonical}) of {len(args.adapter)} adapter(s), "
              f"{adapter.nbytes / 2**20:.2f} MiB, {time.perf_counter() - start:.1f} s")
