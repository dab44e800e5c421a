"""``dppa-peft inspect``: the density plan (block × module) and the delta statistics of the paper's Table 8."""

from __future__ import annotations

import argparse

from ..analysis import (
    delta_statistics, density_grid, density_grid_from_config, density_heatmap, format_density_table,
    format_statistics_table,
)
from ..methods import METHODS
from ..pipeline import open_adapter, open_pair, plan_densities
from ..scope import DEFAULT_SCOPE_PATTERN, Scope
from .common import add_dataclass_options, given_options

_ACCEPTED: dict[str, list[str]] = {}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect", help="show an adapter's or a method's density plan and the delta statistics",
        description="For an ADAPTER: its recorded kept density per block x module. For --base/--finetuned: the "
                    "density plan that --method would use at --rate, and the delta quantiles (min, 10%%..90%%, max) "
                    "per pruned tensor and over the whole model (paper Table 8). --png writes the density heatmap "
                    "(paper Figure 3).",
    )
    parser.add_argument("adapter", nargs="?", help="adapter folder or Hub id (or use --base and --finetuned)")
    parser.add_argument("--base", help="base model: folder or Hub id")
    parser.add_argument("--finetuned", help="fine-tuned model: folder or Hub id")
    parser.add_argument("--method", default="dp", choices=sorted(METHODS), help="method whose plan to show (dp)")
    parser.add_argument("--rate", type=float, default=0.9, help="target pruning rate (default 0.9)")
    parser.add_argument("--scope-pattern", default=DEFAULT_SCOPE_PATTERN, help="regex selecting pruned tensors")
    parser.add_argument("--no-stats", action="store_true", help="skip the delta statistics pass (pairs only)")
    parser.add_argument("--png", help="write the kept-density heatmap to this PNG file")
    group = parser.add_argument_group("method parameters (as in `dppa-peft prune`)")
    _ACCEPTED.update(add_dataclass_options(group, {name: cls.Params for name, cls in METHODS.items()}))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if bool(args.adapter) == bool(args.base or args.finetuned):
        raise ValueError("pass either an ADAPTER or both --base and --finetuned")
    if args.adapter:
        adapter = open_adapter(args.adapter)
        densities = {n: r["density"] for n, r in adapter.config.tensors.items() if r.get("pruned")}
        grid = density_grid_from_config(densities, Scope(adapter.config.scope_pattern or DEFAULT_SCOPE_PATTERN))
        title = f"{adapter.config.method.get('name')} at rate {adapter.config.method.get('rate')}"
    else:
        if not (args.base and args.finetuned):
            raise ValueError("--base and --finetuned go together")
        pair = open_pair(args.base, args.finetuned, args.scope_pattern)
        params = given_options(args, _ACCEPTED, args.method, "method")
        grid = density_grid(plan_densities(pair, args.method, args.rate, **params))
        title = f"{args.method} at rate {args.rate}"
        if not args.no_stats:
            rows, model_row = delta_statistics(pair.deltas(desc="statistics"))
            print("delta statistics (paper Table 8; ~ = streamed histogram, exact min/max):")
            print(format_statistics_table([*rows, model_row]))
            print()
    print(f"kept density per block x module ({title}):")
    print(format_density_table(grid))
    if args.png:
        density_heatmap(grid, args.png, title=f"kept density, {title}")
        print(f"wrote {args.png}")
