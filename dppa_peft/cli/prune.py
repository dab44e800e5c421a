"""``dppa-peft prune``: two checkpoints -> a sparse delta adapter folder."""

from __future__ import annotations

import argparse

from ..methods import METHODS
from ..pipeline import OUTSIDE_SCOPE_MODES, VALUE_DTYPES, prune
from ..scope import DEFAULT_SCOPE_PATTERN
from .common import add_dataclass_options, given_options

_ACCEPTED: dict[str, list[str]] = {}


def add_parser(sub: argparse._SubParsersAction) -> None:
    methods = "; ".join(f"{name}: {cls.summary}" for name, cls in sorted(METHODS.items()))
    parser = sub.add_parser(
        "prune", help="prune a fine-tune's delta into a sparse delta adapter",
        description=f"Compute delta = finetuned - base tensor by tensor (fp32), prune it and write a PEFT adapter "
                    f"folder (adapter_config.json, adapter_model.safetensors, README.md). Methods: {methods}.",
    )
    parser.add_argument("--base", required=True, help="base model: local folder or Hub id")
    parser.add_argument("--finetuned", required=True, help="fine-tuned model of the same base: folder or Hub id")
    parser.add_argument("--out", required=True, help="output adapter folder (written atomically)")
    parser.add_argument("--method", default="dp", choices=sorted(METHODS), help="pruning method (default: dp)")
    parser.add_argument("--rate", type=float, default=0.9,
                        help="target pruning rate alpha in [0, 1]; 0.9 keeps 10%% of each pruned delta (default 0.9)")
    parser.add_argument("--scope-pattern", default=DEFAULT_SCOPE_PATTERN,
                        help="regex with named groups 'block' and 'module' selecting the pruned tensors (2-D weights "
                             "inside numbered decoder blocks by default)")
    parser.add_argument("--outside-scope", default="dense", choices=OUTSIDE_SCOPE_MODES,
                        help="changed tensors outside the scope (embeddings, lm_head, norms, biases): keep 'dense' "
                             "(default), prune with 'magnitude' at the base rate, or 'drop'")
    parser.add_argument("--value-dtype", default="auto", choices=sorted(VALUE_DTYPES),
                        help="dtype of stored values; 'auto' keeps the fine-tune's dtype (default)")
    parser.add_argument("--revision", default=None, help="revision of the fine-tuned model on the Hub")
    parser.add_argument("--base-revision", default=None, help="revision of the base model on the Hub")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    group = parser.add_argument_group("method parameters (each applies to the methods listed with it)")
    _ACCEPTED.update(add_dataclass_options(group, {name: cls.Params for name, cls in METHODS.items()}))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    params = given_options(args, _ACCEPTED, args.method, "method")
    adapter, summary = prune(
        args.base, args.finetuned, args.out, method=args.method, rate=args.rate, scope_pattern=args.scope_pattern,
        outside_scope=args.outside_scope, value_dtype=args.value_dtype, revision=args.revision,
        base_revision=args.base_revision, overwrite=args.overwrite, command=args.command_line, **params,
    )
    print(f"wrote {adapter.directory}: {summary.line()}")
