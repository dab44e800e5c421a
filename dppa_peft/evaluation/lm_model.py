"""lm-eval model ``dppa``: lm-eval's ``hf`` model plus sparse delta adapters, merged into the weights at load time.

From Python: ``simple_evaluate(model="dppa", model_args={"pretrained": BASE, "adapters": "a;b"}, ...)`` after
importing this module. From the shell: ``dppa-lm-eval --model dppa --model_args "pretrained=BASE,adapters=a;b"``, or
lm-eval's own ``--model hf --model_args pretrained=BASE,peft=A`` (the stock ``lm_eval`` command discovers no plugins
and does not know the SPARSE_DELTA type; ``dppa-lm-eval`` registers it and serves ``hf`` with this class).

The base is loaded by lm-eval's HFLM itself, so ``device``, ``dtype``, ``parallelize``, ``device_map``,
``max_memory_per_gpu``, ``max_cpu_memory`` and every other HFLM argument keep their lm-eval meaning (accelerate
big-model loading included). The adapters are then merged in place (``merge_adapter=True``, the default: as fast as
the base), or attached unmerged through PEFT (``merge_adapter=False``). Lists inside ``model_args`` are separated by
``;`` because ``,`` separates the arguments. A ``peft=`` adapter of another type (LoRA, ...) goes to PEFT as in
stock lm-eval.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ..core.errors import UserError
from ..format.config import SparseDeltaType

LIST_SEPARATOR = ";"
#: lm-eval's names of its HF model, served by :class:`DppaLM` under ``dppa-lm-eval``.
HF_MODEL_NAMES = ("hf", "hf-auto", "huggingface")
MODEL_NAME = "dppa"


def split_list(value: str | Sequence[Any] | None) -> list[Any]:
    """'a;b' -> ['a', 'b']; lists (of paths, ids or open adapters) pass through; None or '' -> []."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(LIST_SEPARATOR) if item.strip()]
    return list(value)


def as_bool(value: bool | str) -> bool:
    """lm-eval passes ``model_args`` values from the command line as strings: 'False' -> False."""
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"expected True or False, got {value!r}")
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def is_sparse_delta(ref: str, revision: str | None = None) -> bool:
    """Whether ``ref`` (a folder or Hub id) holds a dppa-peft SPARSE_DELTA adapter."""
    from peft import PeftConfig

    try:
        config = PeftConfig.from_pretrained(ref, revision=revision)
    except (OSError, ValueError):  # not an adapter we can read: let PEFT report it the usual way
        return False
    return config.peft_type == SparseDeltaType.SPARSE_DELTA


@register_model(MODEL_NAME)
class DppaLM(HFLM):
    """HFLM whose base gets ``adapters`` (and a SPARSE_DELTA ``peft=``) merged in, or attached unmerged.

    ``weights``, ``mode`` and ``mode_options`` (Python only, e.g. TIES options) are those of
    :func:`dppa_peft.load_merged`; ``adapter_revisions`` one Hub revision per adapter. Without adapters it is
    lm-eval's ``hf`` model unchanged, except that ``device`` defaults to cuda only when there is one.
    """

    _model: Any  # the loaded model (HFLM's attribute, set by its ``_create_model``)

    def __init__(
        self,
        pretrained: Any,
        adapters: str | Sequence[str] | None = None,
        weights: str | Sequence[float] | None = None,
        mode: str = "sum",
        adapter_revisions: str | Sequence[str] | None = None,
        merge_adapter: bool | str = True,
        mode_options: Mapping[str, Any] | None = None,
        peft: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        refs = split_list(adapters)
        revisions = split_list(adapter_revisions) or None
        if peft and is_sparse_delta(peft):
            refs, peft = [*refs, peft], None
            revisions = None if revisions is None else [*revisions, "main"]
        self._adapters = refs
        self._adapter_revisions = revisions
        self._weights = [float(w) for w in split_list(weights)] or None
        self._mode = mode
        self._mode_options = dict(mode_options or {})
        self._merge = as_bool(merge_adapter)
        if refs and not self._merge and (self._weights or mode != "sum" or self._mode_options):
            raise UserError(
                "unmerged adapters (merge_adapter=False) are summed with weight 1 by PEFT; weights= and "
                "mode= need merge_adapter=True"
            )
        if refs and not isinstance(pretrained, str):
            raise UserError(
                "model dppa loads the base itself: pass pretrained=FOLDER_OR_HUB_ID, not a model object "
                "(for a model in memory use dppa_peft.merge.merge_into, then HFLM(pretrained=model))"
            )
        if device is None:  # HFLM's own default is "cuda", which fails on a machine without one
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs.setdefault("use_safetensors", True)  # never unpickle a checkpoint (transformers' from_pretrained)
        super().__init__(pretrained=pretrained, peft=peft, device=device, **kwargs)

    def _create_model(self, *args: Any, **kwargs: Any) -> None:
        """HFLM's own loading (devices, dtype, device maps), then the sparse delta adapters."""
        super()._create_model(*args, **kwargs)
        if not self._adapters:
            return
        if self._merge:
            from ..merge import merge_into

            merge_into(
                self._model,
                self._adapters,
                self._weights,
                self._mode,
                adapter_revisions=self._adapter_revisions,
                progress=False,
                **self._mode_options,
            )
        else:
            self._model = attach_unmerged(self._model, self._adapters, self._adapter_revisions)


def attach_unmerged(model: Any, refs: Sequence[str], revisions: Sequence[str | None] | None = None) -> Any:
    """A PeftModel with every adapter loaded and all of them active (their deltas add up at each forward)."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    revisions = list(revisions) if revisions else [None] * len(refs)
    refs = [str(getattr(ref, "directory", ref)) for ref in refs]  # an open adapter handle: its folder
    names = [f"adapter_{i}" for i in range(len(refs))]
    peft_model = PeftModel.from_pretrained(model, refs[0], adapter_name=names[0], revision=revisions[0])
    for name, ref, revision in zip(names[1:], refs[1:], revisions[1:]):
        peft_model.load_adapter(ref, adapter_name=name, revision=revision)
    cast(BaseTuner, peft_model.base_model).set_adapter(names)  # the tuner activates several at once
    return peft_model.eval()


def with_dppa_model(argv: Sequence[str]) -> list[str]:
    """``--model hf`` (or an alias) -> ``--model dppa``, so lm-eval's ``peft=`` takes SPARSE_DELTA adapters."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--model" and i + 1 < len(out) and out[i + 1] in HF_MODEL_NAMES:
            out[i + 1] = MODEL_NAME
        elif arg.startswith("--model=") and arg.partition("=")[2] in HF_MODEL_NAMES:
            out[i] = f"--model={MODEL_NAME}"
    return out


def with_package_tasks(argv: Sequence[str]) -> list[str]:
    """Add ``--include_path`` of the package's task folders (paper_*, demo_*) unless one is given."""
    from ..eval_tasks import TASKS_DIR

    out = list(argv)
    if any(arg == "--include_path" or arg.startswith("--include_path=") for arg in out):
        return out
    return [*out, "--include_path", str(TASKS_DIR)]


def cli() -> None:
    """``dppa-lm-eval``: lm-eval's own command line with the ``dppa`` model registered and serving ``hf``, and the
    package's tasks included."""
    from lm_eval.__main__ import cli_evaluate

    argv = with_dppa_model(sys.argv[1:])
    sys.argv = [sys.argv[0], *(with_package_tasks(argv) if "--tasks" in argv else argv)]
    cli_evaluate()
