"""Pair a base checkpoint with a fine-tune of it and stream the fp32 deltas ``δ = W_ft − W_B`` tensor by tensor."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from .format.fingerprint import tensor_sample
from .checkpoint import Checkpoint
from .errors import UserError
from .scope import Scope, TensorInfo

ARCHITECTURE_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "head_dim",
)
VOCAB_TENSOR_HINTS = ("embed", "lm_head", "wte", "word_embeddings", "output.weight")


class CheckpointMismatchError(UserError):
    """The two checkpoints are not a base and a fine-tune of it."""


class DeltaPair:
    """A base checkpoint and a fine-tuned checkpoint that fit each other, with the pruning scope applied."""

    def __init__(self, base: Checkpoint, finetuned: Checkpoint, scope: Scope | None = None) -> None:
        self.base = base
        self.finetuned = finetuned
        self.scope = scope or Scope()
        self._check_architecture()
        self.extra_rows: dict[str, int] = {}
        self.base_samples: dict[str, bytes] = {}  # fingerprint samples of every base tensor read so far
        self.infos: list[TensorInfo] = self._pair_tensors()

    def _check_architecture(self) -> None:
        base_cfg, ft_cfg = self.base.config or {}, self.finetuned.config or {}
        for field in ARCHITECTURE_FIELDS:
            if field in base_cfg and field in ft_cfg and base_cfg[field] != ft_cfg[field]:
                raise CheckpointMismatchError(
                    f"{self.finetuned.ref} is not a fine-tune of {self.base.ref}: config {field} is "
                    f"{ft_cfg[field]!r} vs {base_cfg[field]!r} in the base; pass the base model it was fine-tuned from"
                )

    def _pair_tensors(self) -> list[TensorInfo]:
        base_names, ft_names = set(self.base.names()), set(self.finetuned.names())
        if base_names != ft_names:
            only_base, only_ft = sorted(base_names - ft_names), sorted(ft_names - base_names)
            raise CheckpointMismatchError(
                f"tensor names differ between base {self.base.ref} and fine-tune {self.finetuned.ref}: "
                f"only in base {only_base[:5]}{'...' if len(only_base) > 5 else ''}, "
                f"only in fine-tune {only_ft[:5]}{'...' if len(only_ft) > 5 else ''}; "
                "both must be the same architecture saved the same way"
            )
        infos = []
        for name in sorted(base_names):
            base_shape, ft_shape = self.base.shape(name), self.finetuned.shape(name)
            if base_shape != ft_shape:
                self._check_vocab_extension(name, base_shape, ft_shape)
                self.extra_rows[name] = ft_shape[0] - base_shape[0]
            infos.append(self.scope.classify(name, ft_shape))
        return infos

    def _check_vocab_extension(self, name: str, base_shape: tuple[int, ...], ft_shape: tuple[int, ...]) -> None:
        grows_rows = len(base_shape) == len(ft_shape) and ft_shape[0] > base_shape[0] and ft_shape[1:] == base_shape[1:]
        if not (grows_rows and any(h in name for h in VOCAB_TENSOR_HINTS)):
            raise CheckpointMismatchError(
                f"tensor {name!r} has shape {list(ft_shape)} in the fine-tune but {list(base_shape)} in the base; only "
                "embedding/lm_head rows may grow (added tokens). Check that you passed the right base model"
            )

    def delta(self, name: str) -> torch.Tensor:
        """The fp32 delta of one tensor. Rows added to the vocabulary hold the fine-tune's full values."""
        ft = self.finetuned.read(name).float()
        base = self.base.read(name)
        self.base_samples[name] = tensor_sample(base)
        base = base.float()
        rows = base.shape[0] if name in self.extra_rows else ft.shape[0]
        ft[:rows] -= base
        return ft

    def deltas(self, infos: list[TensorInfo] | None = None, desc: str = "deltas",
               progress: bool = True) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        """Yield (info, fp32 delta) one tensor at a time."""
        infos = self.infos if infos is None else infos
        for info in tqdm(infos, desc=desc, unit="tensor", disable=not progress, leave=False):
            yield info, self.delta(info.name)
