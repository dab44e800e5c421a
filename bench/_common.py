"""Shared bench helpers: synthetic Llama checkpoints and measuring a job in a fresh process (time, peak RSS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_llama(path: Path, layers: int, hidden: int, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A random Llama checkpoint (no training: benches measure I/O and arithmetic, not quality)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    )
    AutoModelForCausalLM.from_config(config).to(dtype).save_pretrained(path)
    return path


def make_finetune(base: Path, path: Path, scale: float, seed: int) -> Path:
    """Base plus Gaussian noise of std ``scale`` on every weight (a stand-in for a fine-tune's delta)."""
    model = AutoModelForCausalLM.from_pretrained(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator) * scale
            param.add_(noise.to(param.dtype))
    model.save_pretrained(path)
    return path


SAMPLER = """
import json, threading, time

def _anon_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0

_peak = [_anon_mib()]

def _sample():
    while True:
        _peak[0] = max(_peak[0], _anon_mib())
        time.sleep(0.005)

threading.Thread(target=_sample, daemon=True).start()
"""
REPORT = """
_peak[0] = max(_peak[0], _anon_mib())
print("MEASURE" + json.dumps({"seconds": time.perf_counter() - _start, "cpu_seconds": time.process_time() - _cpu_start,
                              "peak_anon_mib": _peak[0]}))
"""


def measure(code: str, setup: str = "", env: dict[str, str] | None = None) -> dict:
    """Run ``setup`` (imports, untimed) then ``code`` in a fresh process; return the wall time of ``code``, its CPU
    time (user + system, every thread: steadier than wall time on a shared machine), the peak anonymous memory of the
    process (MiB, sampled every 5 ms) and its peak resident set (``ru_maxrss``, MiB).

    Anonymous memory excludes the file pages that memory-mapped safetensors reads touch (page cache, not heap);
    the peak resident set counts them while they are mapped (what ``time -v`` and schedulers report).
    """
    start = "\n_start, _cpu_start = time.perf_counter(), time.process_time()\n"
    program = SAMPLER + textwrap.dedent(setup) + start + textwrap.dedent(code) + REPORT
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-c", program], stdout=out, stderr=err, text=True, env=full_env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise RuntimeError(stderr[-3000:])
    line = next(row for row in stdout.splitlines() if row.startswith("MEASURE"))
    return {**json.loads(line[len("MEASURE") :]), "peak_rss_mib": usage.ru_maxrss / 1024}


def folder_mib(path: Path, pattern: str = "*.safetensors") -> float:
    return sum(p.stat().st_size for p in Path(path).glob(pattern)) / 2**20


def print_table(
    columns: list[str], rows: list[list[object]], json_path: str | None = None, records: object = None
) -> None:
    """Print a markdown table (``rows`` of cells, already formatted or printed with ``str``); with ``json_path``,
    also write ``records`` (the rows as measured) there as JSON."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    if json_path:
        Path(json_path).write_text(json.dumps(records, indent=2))
