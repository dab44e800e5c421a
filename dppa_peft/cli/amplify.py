"""``dppa-peft amplify``: DPA on an existing adapter -> a new adapter folder (options from ``AmplifySpec``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..amplify.spec import AmplifySpec
from .common import add_spec_command

if TYPE_CHECKING:
    from ..amplify.learned import LearnResult
    from ..amplify.search import SearchResult


def describe_learned(result: LearnResult) -> str:
    """One line for the terminal about learned amplification."""
    record = result.record()
    stats = record["factor_stats"]
    return (
        f"learned {stats['count']} factors ({record['granularity']}; {stats['min']:.3g} to {stats['max']:.3g}, "
        f"mean {stats['mean']:.3g}) in {result.steps} Adam steps, {result.seconds:.1f} s: held-out KL "
        f"{result.heldout_kl_before:.4g} -> {result.heldout_kl_after:.4g} (best at step {result.best_step})"
    )


def describe_search(result: SearchResult | LearnResult | None, factors: list[float]) -> str:
    """A few lines for the terminal: the factors and, after a search, every evaluation."""
    from ..amplify.learned import LearnResult

    if result is None:
        return f"factors {factors} (given, no search)"
    if isinstance(result, LearnResult):
        return describe_learned(result)
    settings = result.settings
    lines = [
        f"factors {factors}: {settings['strategy']} search, DPA method {settings['dpa_method']}, "
        f"{result.calls} objective calls in {result.seconds:.1f} s; score of these factors "
        f"{result.score if result.score is None else f'{result.score:.6g}'}, best evaluated "
        f"{result.best.score:.6g} at {result.best.factors}"
    ]
    if settings.get("at_bound"):
        lines.append(
            f"warning: partitions {settings['at_bound']} ended at the bounds {settings['bounds']}; "
            "the optimum may lie outside (widen --bounds)"
        )
    lines += [f"  call {i:3d}  factors {e.factors}  score {e.score:.6g}" for i, e in enumerate(result.history, 1)]
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_spec_command(
        sub,
        "amplify",
        AmplifySpec,
        run=run,
        help="DPA: search partition factors for an existing adapter and write the amplified adapter",
        description="Dynamic Partition Amplification on an adapter written by `dppa-peft prune`: split its kept "
        "entries into partitions by pruning rate (0.9, 0.8, ... down to its rate), search one factor "
        "per partition against an objective (the base model is loaded once and candidates are applied "
        "in place), and write a new adapter whose config records the factors and every evaluation.",
    )


def run(spec: AmplifySpec, args: argparse.Namespace) -> None:
    from ..amplify.api import amplify

    adapter, result = amplify(spec, command=args.command_line)
    print(f"wrote {adapter.directory}: {describe_search(result, (adapter.config.amplification or {})['raw_factors'])}")
