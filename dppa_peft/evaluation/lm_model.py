"""lm-eval model ``dppa``: a base model plus sparse delta adapters merged at load time.

From Python: ``simple_evaluate(model="dppa", model_args={"pretrained": BASE, "adapters": "a;b"}, ...)`` after
importing this module. From the shell: ``dppa-lm-eval --model dppa --model_args "pretrained=BASE,adapters=a;b"``
(the stock ``lm_eval`` command does not discover plugins; ``dppa-lm-eval`` registers the model and then runs it).
Lists inside ``model_args`` are separated by ``;`` because ``,`` separates the arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from transformers import AutoTokenizer

from ..merge import load_merged

LIST_SEPARATOR = ";"


def split_list(value: str | Sequence[str] | None) -> list[str]:
    """'a;b' -> ['a', 'b']; lists pass through; None or '' -> []."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(LIST_SEPARATOR) if item.strip()]
    return [str(item) for item in value]


@register_model("dppa")
class DppaLM(HFLM):
    """HFLM over ``load_merged(pretrained, adapters, weights, mode)``; every other HFLM argument passes through."""

    def __init__(self, pretrained: str, adapters: str | Sequence[str] | None = None,
                 weights: str | Sequence[float] | None = None, mode: str = "sum", revision: str | None = None,
                 adapter_revisions: str | Sequence[str] | None = None, dtype: str = "auto",
                 trust_remote_code: bool = False, tokenizer: Any = None, **kwargs: Any) -> None:
        adapter_refs = split_list(adapters)
        if not adapter_refs:
            raise ValueError("model dppa needs adapters=PATH_OR_ID[;...]; for the base alone use --model hf")
        model = load_merged(pretrained, adapter_refs, weights=[float(w) for w in split_list(weights)] or None,
                            mode=mode, revision=revision, adapter_revisions=split_list(adapter_revisions) or None,
                            dtype=dtype, trust_remote_code=trust_remote_code, progress=False)
        if tokenizer is None:  # the base's own tokenizer, from the folder load_merged resolved (Hub ids included)
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path, trust_remote_code=trust_remote_code)
        elif isinstance(tokenizer, str):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)
        kwargs.pop("device", None)  # the merged model is already placed; lm-eval's CLI always passes a device
        super().__init__(pretrained=model, tokenizer=tokenizer, **kwargs)


def cli() -> None:
    """``dppa-lm-eval``: lm-eval's own command line with the ``dppa`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
