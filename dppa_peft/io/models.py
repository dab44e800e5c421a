"""Model and tokenizer loading, in one place: transformers models only ever from safetensors, placed on a device,
their vocabulary grown to an adapter's, a model's skeleton on the meta device, and the first tokenizer that loads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.devices import resolve_device
from .checkpoint import Checkpoint


def load_causal_lm(ref: str | os.PathLike, **kwargs: Any) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` that only ever reads safetensors: a local folder is checked first
    (a pickled-only folder or a damaged file is a clear error), and transformers is told ``use_safetensors=True``."""
    from transformers import AutoModelForCausalLM

    if Path(ref).expanduser().is_dir():
        Checkpoint(Path(ref).expanduser())
    return AutoModelForCausalLM.from_pretrained(ref, use_safetensors=True, **kwargs)


def load_on_device(
    ref: str | os.PathLike,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    revision: str | None = None,
    token: str | bool | None = None,
) -> nn.Module:
    """A model loaded by :func:`load_causal_lm` (on the CPU), then moved to ``device`` in eval mode."""
    model = load_causal_lm(ref, dtype=dtype, revision=revision, token=token)
    return model.to(resolve_device(device)).eval()


def device_placement(device: str | torch.device) -> dict[str, Any]:
    """The ``from_pretrained`` keywords that load a model straight onto ``device`` (none for the CPU)."""
    on = resolve_device(device)
    return {} if on.type == "cpu" else {"device_map": {"": str(on)}}


def resize_vocabulary(model: nn.Module, vocab_size: int | None) -> None:
    """Grow the input/output embeddings to ``vocab_size`` with zero rows (the adapter stores their full values)."""
    input_embeddings = getattr(model, "get_input_embeddings", None)  # a transformers model (duck-typed)
    if vocab_size is None or input_embeddings is None:
        return
    old = input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return
    getattr(model, "resize_token_embeddings")(vocab_size, mean_resizing=False)
    with torch.no_grad():
        input_embeddings().weight[old:] = 0
        output = getattr(model, "get_output_embeddings")()
        if output is not None:
            output.weight[old:] = 0


def model_skeleton(checkpoint: Checkpoint) -> torch.nn.Module:
    """The base architecture on the meta device (module types and names, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if checkpoint.config is None:
        raise FileNotFoundError(f"{checkpoint.ref} has no config.json; the export needs the base model's config")
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint.directory))


def load_tokenizer(
    candidates: Sequence[str | os.PathLike | None], revision: str | None = None, token: str | bool | None = None
) -> Any:
    """The first tokenizer that loads from ``candidates`` (folders or Hub ids)."""
    from transformers import AutoTokenizer

    tried = [str(c) for c in candidates if c is not None]
    for ref in tried:
        try:
            return AutoTokenizer.from_pretrained(ref, revision=revision, token=token)
        except (OSError, ValueError):
            continue
    raise ValueError(f"no tokenizer found in {tried}; pass a tokenizer folder (--tokenizer)")
