"""Independent reference for tests: base + pruned delta computed straight from the safetensors files."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

LINEAR_IN_BLOCK = re.compile(r"layers\.\d+\..+\.weight$")
PROMPT = torch.tensor([[3, 17, 42, 9, 100, 5, 77, 1]])


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def top_k_reference(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the floor(d·n) largest |δ| (stable sort: lowest index wins ties)."""
    flat = delta.reshape(-1)
    k = int(density * flat.numel() + 1e-9)
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
    out = torch.zeros_like(flat)
    out[order] = flat[order]
    return out.reshape(delta.shape)


def magnitude_merged_weights(
    base: Path, finetuned: Path, density: float, weight: float = 1.0, start: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """W_B + w·prune(δ): in-block 2-D linears pruned by exact top-k, everything else dense."""
    base_w, ft_w = load_weights(base), load_weights(finetuned)
    out = dict(start) if start is not None else {k: v.float().clone() for k, v in base_w.items()}
    for name, b in base_w.items():
        delta = ft_w[name].float() - b.float()
        if LINEAR_IN_BLOCK.search(name) and delta.ndim == 2:
            delta = top_k_reference(delta, density)
        out[name] = out[name] + weight * delta
    return out


def logits(model: torch.nn.Module) -> torch.Tensor:
    """The model's logits on ``PROMPT``, without gradients."""
    with torch.no_grad():
        return model(PROMPT).logits


def logits_with(base: Path, weights: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits of ``base``'s architecture with ``weights``: in fp32 by default, or loaded and run in ``dtype``."""
    model = AutoModelForCausalLM.from_pretrained(base, **({"dtype": dtype} if dtype else {}))
    model.load_state_dict({k: v.to(dtype or torch.float32) for k, v in weights.items()})
    return logits(model)
