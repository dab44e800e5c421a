"""``dppa-peft inspect``: the density plan (block × module) and the delta statistics of the paper's Table 8."""

from __future__ import annotations

import argparse

from ..analysis.spec import InspectSpec
from .common import add_spec_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_spec_command(
        sub,
        "inspect",
        InspectSpec,
        run=run,
        help="show an adapter's or a method's density plan and the delta statistics",
        description="For an ADAPTER: its recorded kept density per block x module. For --base/--finetuned: the "
        "density plan that --method would use at --rate, and the delta quantiles (min, 10%..90%, max) "
        "per pruned tensor and over the whole model (paper Table 8). --png writes the density heatmap "
        "(paper Figure 3).",
    )


def run(spec: InspectSpec, args: argparse.Namespace) -> None:
    from ..analysis.stats import (
        delta_statistics,
        density_grid,
        density_grid_from_config,
        density_heatmap,
        format_density_table,
        format_statistics_table,
    )
    from ..delta.pair import open_pair
    from ..prune.pipeline import plan_densities
    from ..publish.adapter import open_adapter
    from ..delta.scope import DEFAULT_SCOPE_PATTERN, Scope

    if spec.adapter is not None:
        adapter = open_adapter(spec.adapter)
        densities = {
            n: r.require(n, "density", "the density table shows") for n, r in adapter.config.tensors.items() if r.pruned
        }
        grid = density_grid_from_config(densities, Scope(adapter.config.scope_pattern or DEFAULT_SCOPE_PATTERN))
        title = f"{adapter.config.method.get('name')} at rate {adapter.config.method.get('rate')}"
    else:
        assert spec.base is not None and spec.finetuned is not None  # InspectSpec checks they come together
        pair = open_pair(spec.base, spec.finetuned, spec.scope_pattern)
        grid = density_grid(plan_densities(pair, spec.method, spec.rate, **spec.params))
        title = f"{spec.method} at rate {spec.rate}"
        if not spec.no_stats:
            rows, model_row = delta_statistics(pair.deltas(desc="statistics"))
            print("delta statistics (paper Table 8; ~ = streamed histogram, exact min/max):")
            print(format_statistics_table([*rows, model_row]))
            print()
    print(f"kept density per block x module ({title}):")
    print(format_density_table(grid))
    if spec.png:
        density_heatmap(grid, spec.png, title=f"kept density, {title}")
        print(f"wrote {spec.png}")
