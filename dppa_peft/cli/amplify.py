"""``dppa-peft amplify``: DPA on an existing adapter (partitions, factor search) -> a new adapter folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..amplify.api import AmplifyParams, amplify
from ..amplify.learned import LearnParams, LearnResult
from ..amplify.objectives import ObjectiveParams
from ..amplify.search import SearchResult
from .common import add_dataclass_options

_ACCEPTED: dict[str, list[str]] = {}


def add_dpa_options(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """The DPA and objective options (generated from ``AmplifyParams`` and ``ObjectiveParams``)."""
    accepted = add_dataclass_options(parser.add_argument_group("DPA partitions and factor search"),
                                     {"DPA": AmplifyParams})
    accepted.update(add_dataclass_options(parser.add_argument_group("DPA objective"), {"objective": ObjectiveParams}))
    accepted.update(add_dataclass_options(parser.add_argument_group("learned amplification (--search learned)"),
                                          {"learned": LearnParams}))
    return accepted


def given_dpa_options(args: argparse.Namespace, accepted: dict[str, list[str]]) -> dict[str, Any]:
    """The DPA options the user set."""
    return {name: getattr(args, name) for name in accepted if getattr(args, name) is not None}


def describe_learned(result: LearnResult) -> str:
    """One line for the terminal about learned amplification."""
    record = result.record()
    stats = record["factor_stats"]
    return (f"learned {stats['count']} factors ({record['granularity']}; {stats['min']:.3g} to {stats['max']:.3g}, "
            f"mean {stats['mean']:.3g}) in {result.steps} Adam steps, {result.seconds:.1f} s: held-out KL "
            f"{result.heldout_kl_before:.4g} -> {result.heldout_kl_after:.4g} (best at step {result.best_step})")


def describe_search(result: SearchResult | LearnResult | None, factors: list[float]) -> str:
    """A few lines for the terminal: the factors and, after a search, every evaluation."""
    if result is None:
        return f"factors {factors} (given, no search)"
    if isinstance(result, LearnResult):
        return describe_learned(result)
    settings = result.settings
    lines = [f"factors {factors}: {settings['strategy']} search, DPA method {settings['dpa_method']}, "
             f"{result.calls} objective calls in {result.seconds:.1f} s; score of these factors "
             f"{result.score if result.score is None else f'{result.score:.6g}'}, best evaluated "
             f"{result.best.score:.6g} at {result.best.factors}"]
    if settings.get("at_bound"):
        lines.append(f"warning: partitions {settings['at_bound']} ended at the bounds {settings['bounds']}; "
                     "the optimum may lie outside (widen --bounds)")
    lines += [f"  call {i:3d}  factors {e.factors}  score {e.score:.6g}" for i, e in enumerate(result.history, 1)]
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "amplify", help="DPA: search partition factors for an existing adapter and write the amplified adapter",
        description="Dynamic Partition Amplification on an adapter written by `dppa-peft prune`: split its kept "
                    "entries into partitions by pruning rate (0.9, 0.8, ... down to its rate), search one factor "
                    "per partition against an objective (the base model is loaded once and candidates are applied "
                    "in place), and write a new adapter whose config records the factors and every evaluation.",
    )
    parser.add_argument("adapter", help="adapter folder or Hub id (from `dppa-peft prune`)")
    parser.add_argument("--base", default=None, help="base model: folder or Hub id (default: the adapter's base)")
    parser.add_argument("--finetuned", default=None,
                        help="the dense fine-tuned model the objective compares with (needed by kl and tasks)")
    parser.add_argument("--out", default=None,
                        help="output adapter folder (default: ADAPTER-dpa next to a local ADAPTER folder)")
    parser.add_argument("--revision", default=None, help="revision of the fine-tuned model on the Hub")
    parser.add_argument("--base-revision", default=None, help="revision of the base model on the Hub")
    parser.add_argument("--adapter-revision", default=None, help="revision of the adapter on the Hub")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _ACCEPTED.update(add_dpa_options(parser))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    out = args.out
    if out is None:
        if not Path(args.adapter).is_dir():
            raise ValueError(f"{args.adapter} is not a local folder; pass --out")
        source = Path(args.adapter)
        out = source.with_name(f"{source.name}-dpa")
    adapter, result = amplify(
        args.adapter, out, finetuned=args.finetuned, base=args.base, revision=args.revision,
        base_revision=args.base_revision, adapter_revision=args.adapter_revision, overwrite=args.overwrite,
        command=args.command_line, **given_dpa_options(args, _ACCEPTED),
    )
    print(f"wrote {adapter.directory}: {describe_search(result, adapter.config.amplification['raw_factors'])}")
