"""``dppa-peft prune``: two checkpoints -> a sparse delta adapter folder."""

from __future__ import annotations

import argparse

from ..amplify.api import prune_and_amplify
from ..methods import METHODS
from ..pipeline import OUTSIDE_SCOPE_MODES, VALUE_DTYPES, prune
from ..scope import DEFAULT_SCOPE_PATTERN
from .amplify import add_dpa_options, describe_search, given_dpa_options
from .common import add_dataclass_options, given_options

DPPA = "dppa"  # --method dppa = --method dp --amplify
_ACCEPTED: dict[str, list[str]] = {}
_DPA_ACCEPTED: dict[str, list[str]] = {}


def add_parser(sub: argparse._SubParsersAction) -> None:
    methods = "; ".join(f"{name}: {cls.summary}" for name, cls in sorted(METHODS.items()))
    parser = sub.add_parser(
        "prune", help="prune a fine-tune's delta into a sparse delta adapter",
        description=f"Compute delta = finetuned - base tensor by tensor (fp32), prune it and write a PEFT adapter "
                    f"folder (adapter_config.json, adapter_model.safetensors, README.md). Methods: {methods}; "
                    f"{DPPA}: dp then DPA (Dynamic Partition Amplification) in one command.",
    )
    parser.add_argument("--base", required=True, help="base model: local folder or Hub id")
    parser.add_argument("--finetuned", required=True, help="fine-tuned model of the same base: folder or Hub id")
    parser.add_argument("--out", required=True, help="output adapter folder (written atomically)")
    parser.add_argument("--method", default="dp", choices=sorted(METHODS) + [DPPA],
                        help=f"pruning method (default: dp); '{DPPA}' = dp, then DPA (same as --method dp --amplify)")
    parser.add_argument("--amplify", action="store_true",
                        help="after pruning, run DPA: store partition ids and search one factor per partition "
                             "(the DPA options below; needs a nested method: dp, magnitude, dare); --search learned "
                             "implies it and works with every method")
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
    parser.add_argument("--base-model-id", default=None, metavar="HUB_ID",
                        help="the Hub id of a --base given as a local folder (checked against the Hub by sampled "
                             "weights when it is reachable; never downloads): recorded in the adapter and its card")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    group = parser.add_argument_group("method parameters (each applies to the methods listed with it)")
    _ACCEPTED.update(add_dataclass_options(group, {name: cls.Params for name, cls in METHODS.items()}))
    _DPA_ACCEPTED.update(add_dpa_options(parser))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    method = "dp" if args.method == DPPA else args.method
    params = given_options(args, _ACCEPTED, method, "method")
    dpa = given_dpa_options(args, _DPA_ACCEPTED)
    common = dict(scope_pattern=args.scope_pattern, outside_scope=args.outside_scope, value_dtype=args.value_dtype,
                  revision=args.revision, base_revision=args.base_revision, base_model_id=args.base_model_id,
                  overwrite=args.overwrite,
                  command=args.command_line)
    if not (args.amplify or args.method == DPPA or dpa.get("search") == "learned"):
        if dpa:
            flags = ", ".join("--" + name.replace("_", "-") for name in sorted(dpa))
            raise ValueError(f"{flags} apply only to DPA: add --amplify (or use --method {DPPA})")
        adapter, summary = prune(args.base, args.finetuned, args.out, method=method, rate=args.rate, **common,
                                 **params)
        print(f"wrote {adapter.directory}: {summary.line()}")
        return
    adapter, summary, result = prune_and_amplify(args.base, args.finetuned, args.out, method=method, rate=args.rate,
                                                 **common, **params, **dpa)
    factors = adapter.config.amplification["raw_factors"]
    print(f"wrote {adapter.directory}: {summary.line()}\n{describe_search(result, factors)}")
