"""How ``dppa-peft eval`` hands one model to lm-eval: a backend name and the ``model_args`` it builds.

- ``hf``: lm-eval's HF model as ``dppa`` (:class:`~dppa_peft.evaluation.lm_model.DppaLM`): the base loaded by lm-eval
  (``device``, ``dtype``, accelerate ``device_map``), adapters merged into it at load; nothing is written to disk.
- ``vllm``: lm-eval's vLLM backend on a merged export: a variant with adapters is written once as a dense model folder
  (``merge_to_folder``), evaluated, and removed afterwards unless kept. vLLM is an optional extra
  (``pip install 'dppa-peft[vllm]'``) and is imported by lm-eval only when a vLLM model is created.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UserError

from ..core.choices import BACKENDS

VLLM_INSTALL = "pip install 'dppa-peft[vllm]'"


@dataclass(frozen=True)
class ModelSource:
    """One model to evaluate: ``pretrained`` (folder or Hub id), with ``adapters`` merged into it when given.

    ``weights``, ``mode`` and ``options`` are those of :func:`dppa_peft.load_merged`; ``label`` names the variant
    (and its merged folder, for the vLLM backend).
    """

    pretrained: str
    adapters: tuple[Any, ...] = ()
    weights: tuple[float, ...] | None = None
    mode: str = "sum"
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str = "model"


@dataclass(frozen=True)
class BackendSettings:
    """Backend choices shared by every model of one evaluation run."""

    backend: str = "hf"
    dtype: str = "auto"
    device_map: str | None = None
    tokenizer: Any = None  # a tokenizer object (hf only) or a folder / Hub id
    work_dir: Path | None = None
    keep_merged: bool = False
    model_args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown evaluation backend {self.backend!r}; choose one of {BACKENDS}")


def require_vllm() -> None:
    """A clear error when vLLM is not installed (lm-eval's own message comes only after the merge)."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            f"--backend vllm needs vLLM, which is not installed: {VLLM_INSTALL} (on a machine with a "
            "GPU vLLM supports), or use --backend hf"
        )


def _plain(ref: Any) -> Any:
    """A path becomes a string; Hub ids, tokenizer objects and open adapter handles pass through (Python API)."""
    return str(ref) if isinstance(ref, os.PathLike) else ref


def hf_model_args(source: ModelSource, settings: BackendSettings) -> dict[str, Any]:
    """``model_args`` of the ``dppa`` model: the base, adapters merged at load, dtype, tokenizer and device map.

    lm-eval's HF model honours ``device_map`` only with ``parallelize=True`` (accelerate big-model loading).
    """
    args: dict[str, Any] = {"pretrained": str(source.pretrained), "dtype": settings.dtype}
    if settings.tokenizer is not None:
        args["tokenizer"] = _plain(settings.tokenizer)
    if source.adapters:
        args["adapters"] = [_plain(a) for a in source.adapters]
        args["mode"] = source.mode
        if source.weights is not None:
            args["weights"] = list(source.weights)
        if source.options:
            args["mode_options"] = dict(source.options)
    if settings.device_map:
        args.update(parallelize=True, device_map=settings.device_map)
    return {**args, **settings.model_args}


def vllm_model_args(folder: str | os.PathLike, settings: BackendSettings) -> dict[str, Any]:
    """``model_args`` of lm-eval's ``vllm`` model on a (merged) model folder."""
    args: dict[str, Any] = {"pretrained": str(folder), "dtype": settings.dtype}
    if isinstance(settings.tokenizer, (str, os.PathLike)):  # vLLM loads tokenizers by name only
        args["tokenizer"] = _plain(settings.tokenizer)
    return {**args, **settings.model_args}


def folder_name(label: str) -> str:
    """A file-system-safe folder name for a variant label ('dppa 90% (ties)' -> 'dppa_90_ties')."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("_") or "model"


@contextlib.contextmanager
def lm_eval_model(source: ModelSource, settings: BackendSettings) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(model, model_args)`` for ``lm_eval.simple_evaluate``; for vLLM, the merged folder exists meanwhile."""
    if settings.backend == "hf":
        from . import lm_model  # noqa: F401  (registers the dppa model with lm-eval)

        yield lm_model.MODEL_NAME, hf_model_args(source, settings)
        return
    require_vllm()
    if not source.adapters:
        yield "vllm", vllm_model_args(source.pretrained, settings)
        return
    folder = _merged_folder(source, settings)
    try:
        yield "vllm", vllm_model_args(folder, settings)
    finally:
        if not settings.keep_merged:
            shutil.rmtree(folder, ignore_errors=True)


def _merged_folder(source: ModelSource, settings: BackendSettings) -> Path:
    """Write ``source`` as one dense model folder under ``settings.work_dir`` (once per variant)."""
    from ..merge import merge_to_folder

    if settings.work_dir is None:
        raise UserError("the vllm backend writes merged models: set BackendSettings.work_dir")
    Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
    out = Path(settings.work_dir) / folder_name(source.label)
    return merge_to_folder(
        source.pretrained,
        list(source.adapters),
        out,
        weights=source.weights,
        mode=source.mode,
        dtype=settings.dtype,
        overwrite=True,
        progress=False,
        **dict(source.options),
    )


def parse_model_args(text: str | None) -> dict[str, Any]:
    """'k=v,k2=v2' (lm-eval's ``--model_args`` syntax, values typed as lm-eval types them) -> dict."""
    from lm_eval.utils import simple_parse_args_string

    bad = [item for item in (text or "").split(",") if item.strip() and "=" not in item]
    if bad:
        raise UserError(f"--model-args expects KEY=VALUE[,KEY=VALUE], got {bad[0]!r}")
    return simple_parse_args_string(text)
