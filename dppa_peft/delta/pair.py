"""Pair a base checkpoint with a fine-tune of it and stream the fp32 deltas ``δ = W_ft − W_B`` tensor by tensor."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import torch
from ..core.progress import progress_bar

from ..core.buffers import Scratch, to_float32
from ..io.sampling import tensor_sample
from ..io.checkpoint import Checkpoint
from ..core.errors import UserError
from ..core.spec import Source
from ..core.validate import all_finite, check_finite
from .scope import DEFAULT_SCOPE_PATTERN, Scope, TensorInfo

ARCHITECTURE_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
)
VOCAB_TENSOR_HINTS = ("embed", "lm_head", "wte", "word_embeddings", "output.weight")
UNRELATED_COSINE = 0.2  # cos(W_ft, W_B) below this: the "fine-tune" barely resembles the base (a wrong base?)
SAMPLE = 65536  # entries per tensor that the wrong-base check looks at
FINITE_FIX = (
    "the checkpoint is corrupt or its training diverged: fix or re-export it (NaN would be dropped "
    "silently and inf would make every merged logit non-finite)"
)
logger = logging.getLogger(__name__)


def is_changed(delta: torch.Tensor) -> bool:
    """True when some entry of ``delta`` is nonzero; a leading slice answers for most changed tensors (``any`` over
    the whole tensor does not stop early)."""
    flat = delta.reshape(-1)
    return bool(flat[:4096].any()) or bool(flat.any())


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
        self._likeness = torch.zeros(3, dtype=torch.float64)  # Σ<ft, base>, Σ|ft|², Σ|base|² over sampled entries
        self._likeness_checked = False
        self._scratch = Scratch()  # read and widening buffers reused from one delta to the next

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
            self._check_dtypes(name)
            infos.append(self.scope.classify(name, ft_shape))
        return infos

    def _check_dtypes(self, name: str) -> None:
        """Both floating point, or the very same non-float dtype (an int32 tensor against fp32 is a wrong file)."""
        base, ft = self.base.dtype(name), self.finetuned.dtype(name)
        if base != ft and not (base.is_floating_point and ft.is_floating_point):
            raise CheckpointMismatchError(
                f"tensor {name!r} is {str(ft).removeprefix('torch.')} in the fine-tune {self.finetuned.ref} but "
                f"{str(base).removeprefix('torch.')} in the base {self.base.ref}; a fine-tune keeps the kind of every "
                "tensor: check that both are the same model saved the same way"
            )

    def _check_vocab_extension(self, name: str, base_shape: tuple[int, ...], ft_shape: tuple[int, ...]) -> None:
        grows_rows = len(base_shape) == len(ft_shape) and ft_shape[0] > base_shape[0] and ft_shape[1:] == base_shape[1:]
        if not (grows_rows and any(h in name for h in VOCAB_TENSOR_HINTS)):
            raise CheckpointMismatchError(
                f"tensor {name!r} has shape {list(ft_shape)} in the fine-tune but {list(base_shape)} in the base; only "
                "embedding/lm_head rows may grow (added tokens). Check that you passed the right base model"
            )

    def delta(self, name: str) -> torch.Tensor:
        """The fp32 delta of one tensor (a fresh tensor). Rows added to the vocabulary hold the fine-tune's full
        values. Both checkpoints are read into reused scratch buffers; the base is widened into a third one."""
        shape, dtype = self.finetuned.shape(name), self.finetuned.dtype(name)
        raw = None if dtype == torch.float32 else self._scratch.get("finetuned", shape, dtype)
        ft = to_float32(self.finetuned.read(name, out=raw))  # fp32: read into a fresh buffer, changed in place
        base = self.base.read(name, out=self._scratch.get("base", self.base.shape(name), self.base.dtype(name)))
        self.base_samples[name] = tensor_sample(base)
        rows = base.shape[0] if name in self.extra_rows else ft.shape[0]
        self._observe_likeness(ft[:rows], base)
        if base.dtype == torch.float32:
            ft[:rows] -= base
        else:
            ft[:rows] -= self._scratch.get("wide", tuple(base.shape), torch.float32).copy_(base)
        if not all_finite(ft):  # one pass in the common case; name the culprit only when needed
            check_finite(self.finetuned.read(name), name, f"the fine-tune {self.finetuned.ref}", FINITE_FIX)
            check_finite(base, name, f"the base {self.base.ref}", FINITE_FIX)
            check_finite(ft, name, f"the delta {self.finetuned.ref} - {self.base.ref}", FINITE_FIX)
        return ft

    def _observe_likeness(self, ft: torch.Tensor, base: torch.Tensor) -> None:
        if base.numel() < 1024 or self._likeness_checked:
            return
        step = max(1, base.numel() // SAMPLE)
        a, b = ft.reshape(-1)[::step].double(), base.reshape(-1)[::step].double()
        self._likeness += torch.stack([a @ b, a @ a, b @ b])

    def check_likeness(self) -> float | None:
        """Warn (once) when the fine-tune looks unrelated to the base; returns the cosine seen (None: no data).

        A fine-tune stays strongly correlated with its base (cosine ≳ 0.5 even after aggressive training, ≈ 1 for
        real LLM fine-tunes); two unrelated models of the same shapes have cosine ≈ 0 and a delta norm ≈ 1.4× the
        weights'. Called by ``deltas`` after its first full pass.
        """
        dot, ft_sq, base_sq = self._likeness.tolist()
        if self._likeness_checked or not base_sq or not ft_sq:
            return None
        self._likeness_checked = True
        cosine = dot / (ft_sq * base_sq) ** 0.5
        relative = max(ft_sq - 2 * dot + base_sq, 0.0) ** 0.5 / base_sq**0.5
        if cosine < UNRELATED_COSINE:
            logger.warning(
                "%s looks unrelated to the base %s: cosine similarity %.3f between their weights, delta norm %.2fx "
                "the base weights' (relative norm); a fine-tune of this base would be strongly correlated with it. "
                "Check --base: the adapter will only fit the base it was computed from",
                self.finetuned.ref,
                self.base.ref,
                cosine,
                relative,
            )
        return cosine

    def deltas(
        self,
        infos: list[TensorInfo] | None = None,
        desc: str = "deltas",
        progress: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        """Yield (info, delta) one tensor at a time: computed in fp32 on the CPU, then moved to ``device`` (None:
        stay) in ``dtype``, so only one delta at a time occupies the device."""
        infos = self.infos if infos is None else infos
        try:
            for info in progress_bar(infos, desc=desc, unit="tensor", disable=not progress):
                yield info, self.delta(info.name).to(device=device, dtype=dtype)
        finally:
            self._scratch.clear()
        self.check_likeness()


def open_pair(
    base: Source | str | os.PathLike,
    finetuned: Source | str | os.PathLike,
    scope_pattern: str = DEFAULT_SCOPE_PATTERN,
    token: str | bool | None = None,
) -> DeltaPair:
    """Open and check a base/fine-tune checkpoint pair (folders or Hub ids, with their revisions)."""
    base, finetuned = Source.of(base), Source.of(finetuned)
    return DeltaPair(
        Checkpoint.open(base.ref, revision=base.revision, token=token),
        Checkpoint.open(finetuned.ref, revision=finetuned.revision, token=token),
        Scope(scope_pattern),
    )
