"""Does pruning stream? Peak memory and time of `dppa_peft.prune` vs model size, against a raw safetensors read.

Peer/limit: reading both checkpoints tensor by tensor with safetensors (the I/O any delta method must do).
Prints, per model size: checkpoint size, prune wall time, raw-read time, their ratio, and peak anonymous memory
above the interpreter baseline (mapped file pages are not counted). Streaming means the peak grows with the
largest tensor, not with the model.

    python bench/prune_streaming.py [--method magnitude] [--rate 0.9]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import folder_mib, make_finetune, make_llama, measure

IMPORTS = "import torch, dppa_peft, transformers, peft"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="magnitude", help="pruning method (default magnitude)")
    parser.add_argument("--rate", type=float, default=0.9, help="pruning rate (default 0.9)")
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 16], help="model depths to compare")
    args = parser.parse_args()
    baseline = measure("", setup=IMPORTS)["peak_anon_mib"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layers in args.layers:
            root = Path(tmp) / f"l{layers}"
            base = make_llama(root / "base", layers=layers, hidden=512)
            ft = make_finetune(base, root / "ft", scale=0.002, seed=1)
            raw = measure(
                f"""
                from safetensors import safe_open
                for path in {[str(base / "model.safetensors"), str(ft / "model.safetensors")]!r}:
                    with safe_open(path, framework="pt") as f:
                        for name in f.keys():
                            f.get_tensor(name).float()
            """,
                setup=IMPORTS,
            )
            run = measure(
                f"""
                dppa_peft.prune({str(base)!r}, {str(ft)!r}, {str(root / "adapter")!r}, method={args.method!r},
                                rate={args.rate}, progress=False)
            """,
                setup=IMPORTS,
            )
            rows.append(
                (
                    layers,
                    folder_mib(base),
                    run["seconds"],
                    raw["seconds"],
                    run["peak_anon_mib"] - baseline,
                    raw["peak_anon_mib"] - baseline,
                    folder_mib(root / "adapter"),
                )
            )
    print(f"method {args.method}, rate {args.rate}; interpreter+imports baseline {baseline:.0f} MiB")
    print(
        "| layers | checkpoint MiB | prune s | raw read s | prune/read | prune peak MiB | read peak MiB | adapter MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for layers, size, prune_s, read_s, prune_peak, read_peak, adapter in rows:
        print(
            f"| {layers} | {size:.0f} | {prune_s:.2f} | {read_s:.2f} | {prune_s / read_s:.2f}x | "
            f"{prune_peak:.0f} | {read_peak:.0f} | {adapter:.1f} |"
        )
    growth = (rows[-1][4] - rows[0][4]) / (rows[-1][1] - rows[0][1]) if len(rows) > 1 else float("nan")
    print(f"peak-memory growth per MiB of checkpoint: {growth:.3f} (0 = fully streamed; 1 = whole model in memory)")


if __name__ == "__main__":
    main()
