"""Real-size runs: prune, merge and load on random Llama-shaped bf16 pairs of ~1B and ~3B parameters, in one run.

Never downloads. Builds each pair (sharded safetensors, base ~ N(0, 0.02), fine-tune = base + Gaussian noise of
1e-3 of the weight scale, rounded to bf16), then runs every step in a fresh process and reports its wall time (work
only, imports excluded) and peak resident set (``ru_maxrss``), against:

- the read limit: reading both checkpoints tensor by tensor with safetensors and converting to fp32 (the I/O any
  delta method must do, once);
- mergekit 0.1.5 ``ties`` at density 0.1 on the same pair (``pip install -e ".[bench]"``), which writes a merged
  model: the nearest peer that also reads both checkpoints and keeps a top-k per tensor;
- ``AutoModelForCausalLM.from_pretrained(base)`` for ``load_merged`` of three adapters (transformers 5 maps the
  weights lazily, so a second row reads every weight once: what using or merging into the model costs at least).

    python bench/scale.py [--sizes 1b 3b] [--workdir DIR] [--keep]

Targets (issue 10): magnitude <= 2.0x and DP <= 3.0x the read limit, DP <= 0.5x mergekit's wall time, peak RSS <=
mergekit's and flat from 1B to 3B, load_merged <= 1.3x loading the base.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import folder_mib, measure
from transformers import AutoModelForCausalLM, LlamaConfig

from dppa_peft.io.checkpoint import ShardedWriter

VOCAB = 32000
WEIGHT_STD = 0.02
RELATIVE_DELTA = 1e-3
SHARD_BYTES = 1 << 30
SIZES = {
    "1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16
    ),
    "3b": dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8
    ),
}
OURS = "import torch, transformers, peft, dppa_peft"
MERGEKIT = "import torch, transformers, yaml, mergekit.config, mergekit.merge"


@dataclass
class Step:
    """One measured step: wall seconds of the work and peak resident set of its process (MiB)."""

    seconds: float
    rss_mib: float
    cpu_seconds: float


def write_pair(root: Path, size: str, seed: int = 0) -> tuple[Path, Path, int]:
    """Write ``root/base`` and ``root/ft`` (reused when present); returns them and the parameter count."""
    base, ft = root / "base", root / "ft"
    config = LlamaConfig(vocab_size=VOCAB, tie_word_embeddings=False, **SIZES[size])
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "bfloat16"
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    params = sum(torch.Size(s).numel() for s in shapes.values())
    if (base / "config.json").is_file() and (ft / "config.json").is_file():
        return base, ft, params
    for folder in (base, ft):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    writers = ShardedWriter(base, SHARD_BYTES), ShardedWriter(ft, SHARD_BYTES)
    generator = torch.Generator().manual_seed(seed)
    for name, shape in sorted(shapes.items()):
        scale = WEIGHT_STD if len(shape) > 1 else 1.0
        weight = torch.randn(shape, generator=generator) * scale if len(shape) > 1 else torch.ones(shape)
        tuned = weight + torch.randn(shape, generator=generator) * (scale * RELATIVE_DELTA)
        writers[0].add(name, weight.bfloat16())
        writers[1].add(name, tuned.bfloat16())
        del weight, tuned
    for writer, folder in zip(writers, (base, ft)):
        writer.close()
        config.save_pretrained(folder)
    return base, ft, params


def step(code: str, setup: str = OURS) -> Step:
    result = measure(code, setup=setup)
    return Step(result["seconds"], result["peak_rss_mib"], result["cpu_seconds"])


def read_limit(base: Path, ft: Path) -> Step:
    return step(
        f"""
        from pathlib import Path
        from safetensors import safe_open
        for folder in {[str(base), str(ft)]!r}:
            for shard in sorted(Path(folder).glob("*.safetensors")):
                with safe_open(shard, framework="pt") as handle:
                    for name in handle.keys():
                        handle.get_tensor(name).float()
    """,
        setup="import torch, safetensors",
    )


def prune(base: Path, ft: Path, out: Path, method: str) -> Step:
    return step(
        f"dppa_peft.prune({str(base)!r}, {str(ft)!r}, {str(out)!r}, method={method!r}, rate=0.9, progress=False)"
    )


def mergekit_ties(root: Path, base: Path, ft: Path) -> Step:
    config = {
        "merge_method": "ties",
        "base_model": str(base),
        "dtype": "bfloat16",
        "parameters": {"normalize": True},
        "models": [{"model": str(ft), "parameters": {"density": 0.1, "weight": 1.0}}],
    }
    (root / "ties.yml").write_text(json.dumps(config))
    out = root / "mergekit"
    shutil.rmtree(out, ignore_errors=True)
    result = step(
        f"""
        config = mergekit.config.MergeConfiguration.model_validate(yaml.safe_load(open({str(root / "ties.yml")!r})))
        mergekit.merge.run_merge(config, {str(out)!r},
                                 mergekit.merge.MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    """,
        setup=MERGEKIT,
    )
    shutil.rmtree(out, ignore_errors=True)
    return result


def load_base(base: Path, touch: bool = False) -> Step:
    """``from_pretrained`` (transformers maps the file lazily); ``touch``: then read every weight once, as any use
    of the model (or a merge into it) must."""
    code = f"model = transformers.AutoModelForCausalLM.from_pretrained({str(base)!r}, dtype='auto')"
    if touch:
        code += "\nfor p in model.parameters():\n    p.sum()"
    return step(code)


def load_merged(base: Path, adapters: list[Path]) -> Step:
    return step(f"dppa_peft.load_merged({str(base)!r}, {[str(a) for a in adapters]!r}, progress=False)")


def run_size(root: Path, size: str) -> dict:
    """Every step on one pair; returns the measurements."""
    base, ft, params = write_pair(root, size)
    read_limit(base, ft)  # warm the page cache so every step below reads from the same cache state
    out: dict = {"size": size, "params": params, "checkpoint_mib": folder_mib(base)}
    out["read"] = read_limit(base, ft)
    adapters = {method: root / f"adapter-{method}" for method in ("magnitude", "dp")}
    for method, folder in adapters.items():
        shutil.rmtree(folder, ignore_errors=True)
        out[method] = prune(base, ft, folder, method)
    out["adapter_mib"] = {method: folder_mib(folder) for method, folder in adapters.items()}
    out["mergekit"] = mergekit_ties(root, base, ft)
    out["load_base"] = load_base(base)
    out["load_touched"] = load_base(base, touch=True)
    out["load_merged"] = load_merged(base, [adapters["magnitude"], adapters["dp"], adapters["magnitude"]])
    return out


def cpu(result: dict, step: str, reference: str) -> float:
    """CPU-time ratio of two steps of one size (user + system of every thread; steadier under load than wall)."""
    return result[step].cpu_seconds / result[reference].cpu_seconds


def report(results: list[dict]) -> str:
    """The markdown tables and ratios (with the targets) of every size."""
    lines = ["| pair | step | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|---|"]
    names = {
        "read": "read limit (safetensors, both checkpoints, fp32)",
        "magnitude": "prune magnitude 0.9",
        "dp": "prune dp 0.9",
        "mergekit": "mergekit 0.1.5 ties density 0.1",
        "load_base": "from_pretrained(base) (lazy)",
        "load_touched": "from_pretrained(base) + read every weight once",
        "load_merged": "load_merged(base, 3 adapters: magnitude, dp, magnitude)",
    }
    for r in results:
        label = f"{r['size']} ({r['params'] / 1e9:.2f}B, {r['checkpoint_mib'] / 1024:.1f} GiB bf16)"
        for key, name in names.items():
            lines.append(
                f"| {label} | {name} | {r[key].seconds:.1f} | {r[key].cpu_seconds:.1f} | {r[key].rss_mib:.0f} |"
            )
    lines += ["", "| pair | ratio | measured | target | met |", "|---|---|---|---|---|"]
    for r in results:
        ratios = [
            ("magnitude / read limit", r["magnitude"].seconds / r["read"].seconds, 2.0),
            ("dp / read limit", r["dp"].seconds / r["read"].seconds, 3.0),
            ("dp / mergekit ties (time)", r["dp"].seconds / r["mergekit"].seconds, 0.5),
            ("dp / mergekit ties (peak RSS)", r["dp"].rss_mib / r["mergekit"].rss_mib, 1.0),
            ("magnitude / mergekit ties (peak RSS)", r["magnitude"].rss_mib / r["mergekit"].rss_mib, 1.0),
            ("load_merged / from_pretrained (time)", r["load_merged"].seconds / r["load_base"].seconds, 1.3),
            (
                "load_merged / (from_pretrained + read every weight) (time)",
                r["load_merged"].seconds / r["load_touched"].seconds,
                None,
            ),
            ("load_merged / from_pretrained (peak RSS)", r["load_merged"].rss_mib / r["load_base"].rss_mib, None),
            ("magnitude / read limit (CPU time)", cpu(r, "magnitude", "read"), None),
            ("dp / read limit (CPU time)", cpu(r, "dp", "read"), None),
            ("dp / mergekit ties (CPU time)", cpu(r, "dp", "mergekit"), None),
            (
                "load_merged / (from_pretrained + read every weight) (CPU time)",
                cpu(r, "load_merged", "load_touched"),
                None,
            ),
        ]
        for method, mib in r["adapter_mib"].items():
            ratios.append((f"adapter {method} / dense bf16 delta (size)", mib / r["checkpoint_mib"], None))
        for name, value, target in ratios:
            met = "" if target is None else ("yes" if value <= target else f"no (+{value / target - 1:.0%})")
            lines.append(
                f"| {r['size']} | {name} | {value:.2f}x | {'' if target is None else f'<= {target}x'} | {met} |"
            )
    if len(results) > 1:
        first, last = results[0], results[-1]
        lines.append("")
        for key in ("magnitude", "dp", "load_merged", "mergekit"):
            lines.append(
                f"peak RSS {key}: {first[key].rss_mib:.0f} MiB at {first['size']} -> {last[key].rss_mib:.0f} "
                f"MiB at {last['size']} ({last[key].rss_mib / first[key].rss_mib:.2f}x for "
                f"{last['params'] / first['params']:.2f}x the parameters)"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1b", "3b"], choices=sorted(SIZES), help="pairs to run")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the pairs are built (reused when already there); default a temp folder",
    )
    parser.add_argument("--keep", action="store_true", help="keep the pairs and adapters after the run")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dppa-scale-"))
    results = []
    try:
        for size in args.sizes:
            results.append(run_size(workdir / size, size))
            print(report(results[-1:]), flush=True)
            if not args.keep:
                shutil.rmtree(workdir / size, ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + report(results))


if __name__ == "__main__":
    main()
