"""Build, or reuse from a cache, the demo zoo: a pretrained base and one full fine-tune per domain.

The fine-tune of ``ZooSpec.heavy_domain`` (math) is trained for many steps with SGD + momentum at a high learning
rate: its delta is heavy-tailed, with its largest entries several times the mean base weight (the paper's "complex"
fine-tunes, where DARE's drop-and-rescale breaks and magnitude pruning holds). The other fine-tunes are light
(AdamW, small learning rate, few steps). A build is written into a temporary folder and renamed when complete, so
an interrupted build is never reused.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from . import domains, tokenizer as tokenizer_module, train as train_module
from .domains import DATA_SEED, DOMAINS, SPLIT_SIZES
from .stats import DeltaStats, delta_stats
from .tasks import domain_task_names, group_name
from .tokenizer import build_tokenizer
from .train import ModelShape, Schedule, finetuning_rows, new_model, pretraining_rows, train

ZOO_FORMAT = 1
MANIFEST = "manifest.json"
BASE = "base"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooSpec:
    """Model shape and training schedules of one zoo size."""

    shape: ModelShape
    pretrain: Schedule
    light: Schedule
    heavy: Schedule
    heavy_domain: str = "math"
    generic_share: float = 0.2

    def schedule(self, domain: str) -> Schedule:
        return self.heavy if domain == self.heavy_domain else self.light


SIZES: dict[str, ZooSpec] = {
    "tiny": ZooSpec(
        shape=ModelShape(64, 192, 2, 4),
        pretrain=Schedule(150, 32, 3e-3),
        light=Schedule(120, 16, 1e-3),
        heavy=Schedule(200, 16, 0.1, optimizer="sgd"),
    ),
    "default": ZooSpec(
        shape=ModelShape(96, 256, 3, 4),
        pretrain=Schedule(600, 32, 3e-3),
        light=Schedule(300, 16, 3e-4),
        heavy=Schedule(1200, 32, 0.03, optimizer="sgd"),
    ),
}


@dataclass(frozen=True)
class Zoo:
    """A built zoo: standard HF model folders (safetensors, config, generation config, tokenizer)."""

    root: Path
    size: str
    seed: int
    base: Path
    finetunes: dict[str, Path]
    heavy: str
    delta_stats: dict[str, DeltaStats]

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.finetunes)

    def tasks(self, split: str = "test") -> dict[str, tuple[str, ...]]:
        """Domain -> the lm-eval task names of its two tasks on ``split`` (``"test"`` or ``"dev"``)."""
        return domain_task_names(split)

    def groups(self, split: str = "test") -> dict[str, str]:
        """Domain -> the lm-eval group name of its tasks on ``split``."""
        return {domain: group_name(domain, split) for domain in self.domains}

    @property
    def manifest(self) -> dict[str, object]:
        """The build record: settings and their hash, delta statistics, final losses, build time, versions."""
        return json.loads((self.root / MANIFEST).read_text())

    @classmethod
    def load(cls, root: str | Path) -> Zoo:
        """Open a built zoo from its folder."""
        root = Path(root)
        manifest = json.loads((root / MANIFEST).read_text())
        return cls(
            root=root,
            size=manifest["size"],
            seed=manifest["seed"],
            base=root / BASE,
            finetunes={d: root / d for d in manifest["domains"]},
            heavy=manifest["heavy"],
            delta_stats={d: DeltaStats(**s) for d, s in manifest["delta_stats"].items()},
        )


def settings(size: str, seed: int) -> dict[str, Any]:
    """Everything a build depends on, including a fingerprint of the code that generates data and trains."""
    if size not in SIZES:
        raise ValueError(f"unknown zoo size {size!r}; expected one of {tuple(SIZES)}")
    code = hashlib.sha256()
    for module in (domains, tokenizer_module, train_module):
        code.update(Path(inspect.getfile(module)).read_bytes())
    return {
        "format": ZOO_FORMAT,
        "size": size,
        "seed": seed,
        "spec": asdict(SIZES[size]),
        "data_seed": DATA_SEED,
        "split_sizes": SPLIT_SIZES,
        "code": code.hexdigest(),
    }


def _location(cache_dir: Path, size: str, seed: int) -> tuple[Path, dict[str, Any], str]:
    """The zoo folder for (size, seed), its settings and their hash."""
    config = settings(size, seed)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return cache_dir / f"zoo-{size}-seed{seed}-{digest[:12]}", config, digest


def _is_complete(root: Path, digest: str) -> bool:
    manifest = root / MANIFEST
    if not manifest.is_file() or json.loads(manifest.read_text()).get("settings_hash") != digest:
        return False
    folders = [root / BASE] + [root / d for d in DOMAINS]
    return all((f / "model.safetensors").is_file() and (f / "tokenizer.json").is_file() for f in folders)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _save(model: transformers.PreTrainedModel, tok: transformers.PreTrainedTokenizerBase, folder: Path) -> None:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def _build(folder: Path, config: dict[str, Any], digest: str, progress: bool) -> None:
    size, seed = str(config["size"]), int(config["seed"])
    spec, started = SIZES[size], time.perf_counter()
    tok = build_tokenizer()
    base = new_model(spec.shape, tok, seed)
    losses = {BASE: train(base, tok, pretraining_rows(seed), spec.pretrain, f"zoo {size}: pretrain base", progress)}
    _save(base, tok, folder / BASE)
    base_state = {name: tensor.detach().clone() for name, tensor in base.state_dict().items()}
    stats: dict[str, dict[str, float]] = {}
    for index, domain in enumerate(DOMAINS):
        model = copy.deepcopy(base)
        torch.manual_seed(seed * 1000 + index + 1)
        rows = finetuning_rows(domain, seed, spec.generic_share)
        losses[domain] = train(model, tok, rows, spec.schedule(domain), f"zoo {size}: fine-tune {domain}", progress)
        stats[domain] = delta_stats(base_state, model.state_dict()).as_dict()
        _save(model, tok, folder / domain)
    manifest = {
        "settings_hash": digest,
        "settings": config,
        "size": size,
        "seed": seed,
        "domains": {d: list(tasks) for d, tasks in DOMAINS.items()},
        "heavy": spec.heavy_domain,
        "delta_stats": stats,
        "final_train_loss": losses,
        "build_seconds": round(time.perf_counter() - started, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _discard(folder: Path) -> None:
    """Remove ``folder`` if it exists, renaming it first so that nothing ever sees it half deleted."""
    if folder.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".stale-{folder.name}-", dir=folder.parent))
        folder.rename(stale / folder.name)
        shutil.rmtree(stale)


def cached_zoo(cache_dir: str | Path, seed: int = 0, size: str = "default") -> Zoo | None:
    """The complete cached zoo for (size, seed) under ``cache_dir``, or None when it must be built."""
    root, _, digest = _location(Path(cache_dir), size, seed)
    return Zoo.load(root) if _is_complete(root, digest) else None


def build_zoo(
    cache_dir: str | Path,
    seed: int = 0,
    size: str = "default",
    force: bool = False,
    progress: bool = True,
    num_threads: int = 2,
) -> Zoo:
    """Return the zoo for (size, seed) under ``cache_dir``, building it first unless a complete build is cached.

    ``force`` rebuilds even when cached. Training uses ``num_threads`` torch threads (restored afterwards); results
    are deterministic for a given seed, size, code and thread count.
    """
    cache_dir = Path(cache_dir)
    root, config, digest = _location(cache_dir, size, seed)
    if force or not _is_complete(root, digest):
        cache_dir.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".building-{root.name}-", dir=cache_dir))
        try:
            log.info("building the %s demo zoo (seed %d) in %s", size, seed, root)
            with torch_threads(num_threads):
                _build(building, config, digest, progress)
            if not force and _is_complete(root, digest):
                log.info("another process completed %s first; using it", root)
            else:
                _discard(root)
                building.rename(root)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return Zoo.load(root)
