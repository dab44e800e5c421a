"""Learned amplification: factors per output row (or coarser) of every pruned tensor, learned by distillation
(docs/algorithms.md §11).

Student = base + Σ_adapters w_a · scatter(values · scalar[partition] · f[partition, row]) (the kernel of
``kernel.weights``, differentiable in ``f``); teacher = the dense fine-tune(s). The factors minimise the mean over
teachers of KL(teacher ‖ student) of next-token distributions on each teacher's own calibration prompts plus its
greedy continuations (computed once, ``build_teacher``); no labels. This is BitDelta's scale distillation
(arXiv 2402.10193) applied to sparse deltas. N adapters and N teachers make a learned merge; one of each is learned
amplification of a single adapter.

Granularities (what one factor covers; partition ids always apply, so P = the tensor's partitions):

- ``row`` (default): one factor per (partition, output row) of each pruned tensor: a ``[P, R]`` table;
- ``tensor``: one per (partition, tensor): ``[P, 1]``;
- ``partition``: one per partition, shared by every pruned tensor of an adapter;
- ``block``: one per decoder block of an adapter (AdaMerging's layer-wise coefficients);
- ``global``: one per adapter (AdaMerging's task-wise coefficient).

Every table is stored as the tensor's ``<param>_factors`` ``[P, R]`` (format version 2; ``R = 1`` below ``row``).
Scaling: the teacher's log-probs are cached on the CPU (full vocabulary, or its top-k plus a "rest" bucket for
large vocabularies), so the teacher is freed before the student is built and only one model is on the device; each step
rebuilds the pruned weights from the frozen base weights (one extra copy of the pruned matrices in the model dtype
plus the autograd graph over the kept values).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from ..core.progress import progress_bar

from ..io.models import load_causal_lm
from ..core.choices import FULL_VOCAB_LIMIT, GRANULARITIES
from ..core.choices import TEACHER_TOP_K as DEFAULT_TOP_K
from ..core.devices import release_memory
from ..core.errors import UserError
from ..kernel.weights import add_sparse, effective_values
from ..format.encoding import EncodedTensor
from ..publish.adapter import SparseDeltaAdapter
from ..methods.base import SparseDelta
from .spec import LearnParams
from .calibration import Prompt, check_lengths
from .objectives import log_probs as _log_probs
from .objectives import model_device, pad_batch, pad_token_id
from ..format.partitions import Partitions

TAIL_FLOOR = 1e-12  # smallest probability of the top-k cache's "rest of the vocabulary" bucket

# teachers ----------------------------------------------------------------------------------------------------------


@dataclass
class TeacherBatch:
    """Right-padded sequences and the teacher's log-probs at every real position (CPU, fp32)."""

    ids: torch.Tensor  # [B, L] long
    mask: torch.Tensor  # [B, L] long
    log_probs: torch.Tensor  # [N, k]: N = mask.sum(); k = the vocabulary, or the top-k log-probs
    tokens: torch.Tensor | None  # [N, k] int32 token ids of a top-k cache; None: the full vocabulary

    @property
    def positions(self) -> int:
        return int(self.log_probs.shape[0])


@dataclass
class Teacher:
    """One dense fine-tune's cached outputs on its calibration prompts, split into training and held-out batches."""

    name: str
    train: list[TeacherBatch]
    heldout: list[TeacherBatch]
    settings: dict[str, Any]

    objective: ClassVar[str] = "kl"

    def loss(self, batch: TeacherBatch, log_q: torch.Tensor) -> torch.Tensor:
        """What the student minimises on ``batch``, summed over its positions: KL(teacher ‖ student)."""
        return kl_divergence(batch, log_q)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "objective": self.objective,
            **self.settings,
            "train_positions": sum(b.positions for b in self.train),
            "heldout_positions": sum(b.positions for b in self.heldout),
        }


@dataclass
class EntropyTarget(Teacher):
    """No teacher: the student's own next-token entropy on the batches' sequences (AdaMerging's label-free
    objective); the cached log-probs are not used."""

    objective: ClassVar[str] = "entropy"

    def loss(self, batch: TeacherBatch, log_q: torch.Tensor) -> torch.Tensor:
        """Σ over positions of the entropy ``−Σ_v q_v log q_v`` of the student's predictions."""
        return -(log_q.exp() * log_q).sum()


def _continue(
    model: nn.Module, prompts: Sequence[list[int]], tokens: int, eos: int | None, pad: int
) -> list[torch.Tensor]:
    """Each prompt plus the model's greedy continuation of up to ``tokens`` tokens (a sequence stops at EOS).

    Batched without a KV cache: every step runs the right-padded batch and reads the logits at each sequence's last
    real position (causal attention: the padding after it changes nothing)."""
    sequences = [list(p) for p in prompts]
    active = list(range(len(sequences)))
    device = model_device(model)
    for _ in range(tokens):
        if not active:
            break
        ids, mask = pad_batch([torch.tensor(sequences[i]) for i in active], pad)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = (mask.sum(dim=1) - 1).to(device)
        chosen = logits[torch.arange(len(active), device=device), last].argmax(-1).tolist()
        for i, token in zip(active, chosen):
            sequences[i].append(int(token))
        active = [i for i, token in zip(active, chosen) if eos is None or token != eos]
    return [torch.tensor(s) for s in sequences]


def split_indices(count: int, heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) prompt indices, both ascending: a seeded ``heldout`` fraction (at least one) is held out."""
    if count < 2:
        raise UserError(f"learned amplification needs at least 2 calibration prompts (one held out), got {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = min(count - 1, max(1, round(heldout * count)))
    return sorted(order[held:]), sorted(order[:held])


def build_teacher(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    continuation_tokens: int = 8,
    batch_size: int = 8,
    heldout: float = 0.2,
    top_k: int | None = None,
    seed: int = 0,
    name: str = "teacher",
) -> Teacher:
    """Greedy continuations and log-probs of the dense fine-tune ``model`` on ``prompts``, computed once.

    Prompts longer than the model's context (with the continuation) are refused before any forward pass. The
    cache is ``positions × k`` fp32 on the CPU: k = vocabulary up to ``FULL_VOCAB_LIMIT`` tokens, else ``top_k``
    (default ``DEFAULT_TOP_K``) log-probs and their int32 token ids (``kl_divergence`` adds a bucket for the rest).
    """
    config: Any = model.config
    context = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)
    token_ids = check_lengths(prompts, tokenizer, context, continuation_tokens)
    vocab = int(config.vocab_size)
    k = top_k if top_k is not None else (None if vocab <= FULL_VOCAB_LIMIT else DEFAULT_TOP_K)
    k = None if k is not None and k >= vocab else k
    pad = pad_token_id(tokenizer)
    train, held = split_indices(len(token_ids), heldout, seed)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        sequences = []
        for start in range(0, len(token_ids), batch_size):
            sequences += _continue(
                model, token_ids[start : start + batch_size], continuation_tokens, tokenizer.eos_token_id, pad
            )

        def batches(rows: list[int]) -> list[TeacherBatch]:
            out = []
            for start in range(0, len(rows), batch_size):
                ids, mask = pad_batch([sequences[r] for r in rows[start : start + batch_size]], pad)
                log_p = _log_probs(model, ids, mask).cpu()
                if k is None:
                    out.append(TeacherBatch(ids, mask, log_p, None))
                else:
                    values, tokens = log_p.topk(k, dim=-1)
                    out.append(TeacherBatch(ids, mask, values, tokens.to(torch.int32)))
            return out

        teacher = Teacher(
            name,
            batches(train),
            batches(held),
            {
                "prompts": len(prompts),
                "heldout_prompts": len(held),
                "continuation_tokens": continuation_tokens,
                "top_k": k,
                "vocab_size": vocab,
                "sources": sorted({p.origin for p in prompts}),
            },
        )
    model.train(was_training)
    return teacher


def model_context(ref: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> int:
    """The context length of a model folder or Hub id (``max_position_embeddings``; unbounded when absent)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ref, revision=revision, token=token)
    return int(getattr(config, "max_position_embeddings", 0) or 1 << 30)


def teacher_from_pretrained(
    ref: str | os.PathLike,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    continuation_tokens: int = 8,
    batch_size: int = 8,
    params: LearnParams | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    revision: str | None = None,
    token: str | bool | None = None,
    name: str | None = None,
) -> Teacher:
    """Load the dense fine-tune ``ref`` on ``device``, cache its outputs (``build_teacher``) and free it again."""
    params = params or LearnParams()
    model = load_causal_lm(ref, dtype=dtype, revision=revision, token=token).to(device)
    try:
        return build_teacher(
            model,
            tokenizer,
            prompts,
            continuation_tokens=continuation_tokens,
            batch_size=batch_size,
            heldout=params.learn_heldout,
            top_k=params.learn_top_k,
            seed=params.learn_seed,
            name=name or str(ref),
        )
    finally:
        del model
        release_memory()


def kl_divergence(teacher: TeacherBatch, log_q: torch.Tensor) -> torch.Tensor:
    """Σ over positions of KL(teacher ‖ student). With a top-k cache, the KL over the k cached tokens plus one bucket
    holding the rest of the vocabulary: exact for the coarsened distributions, 0 when the student equals the
    teacher, a lower bound of the full KL that reaches it as k grows."""
    log_p = teacher.log_probs.to(log_q.device)
    if teacher.tokens is None:
        return (log_p.exp() * (log_p - log_q)).sum()
    log_q = log_q.gather(-1, teacher.tokens.to(log_q.device, torch.long))
    p = log_p.exp()
    p_rest = (1.0 - p.sum(-1)).clamp_min(0.0)
    q_rest = (1.0 - log_q.exp().sum(-1)).clamp_min(TAIL_FLOOR)
    tail = torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(TAIL_FLOOR).log() - q_rest.log()), 0.0)
    return (p * (log_p - log_q)).sum() + tail.sum()


def mean_kl(
    model: nn.Module,
    batches: Sequence[TeacherBatch],
    params: dict[str, torch.Tensor] | None = None,
    loss: Callable[[TeacherBatch, torch.Tensor], torch.Tensor] = kl_divergence,
) -> float:
    """KL(teacher ‖ model) (or another ``loss``, e.g. ``EntropyTarget.loss``) per position over ``batches`` (e.g. a
    teacher's held-out ones), without gradients."""
    with torch.no_grad():
        total = sum(float(loss(b, _log_probs(model, b.ids, b.mask, params))) for b in batches)
    return total / max(1, sum(b.positions for b in batches))


# the student -------------------------------------------------------------------------------------------------------


@dataclass
class _Learned:
    """One pruned adapter tensor whose factor table is learned."""

    name: str
    adapter: int
    encoded: EncodedTensor  # on the model's device, fp32 values
    indices: torch.Tensor
    scalars: list[float]
    weight: float
    table: Any  # () -> [P, R] factors (differentiable)


class Student:
    """The base model plus N adapters whose pruned tensors take learned factor tables; ``params()`` rebuilds the
    pruned weights (kernel arithmetic, differentiable in the factors) for ``torch.func.functional_call``."""

    def __init__(
        self,
        model: nn.Module,
        adapters: Sequence[SparseDeltaAdapter],
        granularity: str,
        partitions: Sequence[Partitions | None] | None = None,
        weights: Sequence[float] | None = None,
        dense: bool = False,
    ) -> None:
        self.model = model.requires_grad_(False).eval()
        self.granularity = granularity
        device = model_device(model)
        named = dict(model.named_parameters())
        weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
        partitions = list(partitions) if partitions is not None else [None] * len(adapters)
        if len(weights) != len(adapters) or len(partitions) != len(adapters):
            raise ValueError(f"pass one weight and one Partitions (or None) per adapter ({len(adapters)} adapters)")
        self.parameters: list[nn.Parameter] = []
        self.learned: list[_Learned] = []
        fixed: dict[str, list[tuple[SparseDelta, float]]] = {}
        for index, (adapter, parts, weight) in enumerate(zip(adapters, partitions, weights)):
            shared: dict[str, nn.Parameter] = {}
            for name, record in adapter.config.tensors.items():
                if name not in named:
                    raise UserError(f"adapter tensor {name!r} of {adapter.ref} is not a parameter of the model")
                encoded = adapter.encoded(name)
                ids = parts.ids.get(name) if parts is not None else None
                ids = encoded.partition if ids is None else ids
                scalars = adapter.config.tensor_factors(name)
                count = 1 if ids is None else (parts.count if parts is not None else len(scalars))
                indices = encoded.indices().to(device)
                on_device = EncodedTensor(
                    encoded.encoding,
                    encoded.shape,
                    encoded.values.to(device, torch.float32),
                    partition=None if ids is None else ids.to(device),
                    factors=None if encoded.factors is None else encoded.factors.to(device),
                )
                if encoded.nnz == 0 or not (record.pruned or (dense and encoded.encoding == "dense")):
                    values = effective_values(on_device, scalars, indices=indices)
                    fixed.setdefault(name, []).append((SparseDelta(indices, values, encoded.shape), weight))
                    continue
                if len(scalars) != count:
                    scalars = [1.0] * count  # partitions re-derived, not the stored ones: no scalar factors yet
                table = self._table(name, on_device, count, shared, device, record.block)
                self.learned.append(_Learned(name, index, on_device, indices, scalars, weight, table))
        with torch.no_grad():  # the tensors without learned factors are merged once, in place
            for name, deltas in fixed.items():
                named[name].copy_(add_sparse(named[name], [d for d, _ in deltas], [w for _, w in deltas]))
        self._base = {name: named[name] for name in sorted({t.name for t in self.learned})}

    def _new(self, shape: tuple[int, ...], device: torch.device, init: torch.Tensor | None = None) -> nn.Parameter:
        data = torch.ones(shape, device=device) if init is None else init.detach().to(device, torch.float32).clone()
        parameter = nn.Parameter(data)
        self.parameters.append(parameter)
        return parameter

    def _table(
        self,
        name: str,
        encoded: EncodedTensor,
        count: int,
        shared: dict[str, nn.Parameter],
        device: torch.device,
        block: int | None,
    ) -> Any:
        """The factor table of one tensor as a function of the learned parameters (the granularity's sharing)."""
        if self.granularity in ("row", "tensor"):
            rows = encoded.shape[0] if self.granularity == "row" and len(encoded.shape) >= 2 else 1
            stored = (
                encoded.factors
                if encoded.factors is not None and tuple(encoded.factors.shape) == (count, rows)
                else None
            )
            parameter = self._new((count, rows), device, stored)
            return lambda: parameter
        size = count if self.granularity == "partition" else 1
        key = f"block {block}" if self.granularity == "block" else self.granularity
        if key not in shared:
            shared[key] = self._new((size,), device)
        parameter = shared[key]
        if parameter.numel() != size:
            raise UserError(
                f"{name} has {count} partitions but other tensors of its adapter have "
                f"{parameter.numel()}; partition granularity needs the same partitions everywhere"
            )
        return lambda: parameter.reshape(-1, 1).expand(count, 1)

    def params(self) -> dict[str, torch.Tensor]:
        """The pruned weights with the current factors (kernel: fp32 accumulation, one cast), by parameter name."""
        deltas: dict[str, list[tuple[SparseDelta, float]]] = {}
        for t in self.learned:
            values = effective_values(t.encoded, t.scalars, t.table(), indices=t.indices)
            deltas.setdefault(t.name, []).append((SparseDelta(t.indices, values, t.encoded.shape), t.weight))
        return {
            name: add_sparse(self._base[name], [d for d, _ in pairs], [w for _, w in pairs])
            for name, pairs in deltas.items()
        }

    def tables(self) -> list[dict[str, torch.Tensor]]:
        """Per adapter: tensor name -> its ``[P, R]`` fp32 factor table (CPU copies)."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(1 + max((t.adapter for t in self.learned), default=-1))]
        for t in self.learned:
            out[t.adapter][t.name] = t.table().detach().float().cpu().contiguous().clone()
        return out

    def heldout_kl(self, teachers: Sequence[Teacher]) -> float:
        """Mean over teachers of their loss (``Teacher.loss``: KL, or entropy) per held-out position, with the
        current factors."""
        with torch.no_grad():
            params = self.params()
            return sum(mean_kl(self.model, t.heldout, params, t.loss) for t in teachers) / len(teachers)


# learning ----------------------------------------------------------------------------------------------------------


@dataclass
class LearnResult:
    """Learned factor tables and how they were found."""

    factors: list[dict[str, torch.Tensor]]  # per adapter: tensor name -> [P, R] fp32
    losses: list[float]  # training KL per step
    heldout: list[tuple[int, float]]  # (step, held-out KL); step 0 = the starting factors
    best_step: int
    steps: int
    seconds: float
    settings: dict[str, Any]
    teachers: list[dict[str, Any]]
    stopped: str | None = None

    @property
    def heldout_kl_before(self) -> float:
        return self.heldout[0][1]

    @property
    def heldout_kl_after(self) -> float:
        return dict(self.heldout)[self.best_step]

    def record(self) -> dict[str, Any]:
        """The ``learned`` block of the adapter config's ``amplification``."""
        values = (
            torch.cat([t.reshape(-1) for tables in self.factors for t in tables.values()])
            if any(self.factors)
            else torch.ones(1)
        )
        return {
            **self.settings,
            "steps_run": self.steps,
            "best_step": self.best_step,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
            "heldout_kl_before": self.heldout_kl_before,
            "heldout_kl_after": self.heldout_kl_after,
            "loss_curve": [round(x, 6) for x in self.losses],
            "heldout_curve": [[s, round(k, 6)] for s, k in self.heldout],
            "factor_stats": {
                "count": values.numel(),
                "min": float(values.min()),
                "max": float(values.max()),
                "mean": float(values.mean()),
            },
            "teachers": self.teachers,
        }


def _order(count: int, generator: torch.Generator) -> list[int]:
    return torch.randperm(count, generator=generator).tolist()


def learn_factors(
    model: nn.Module,
    adapters: Sequence[SparseDeltaAdapter],
    teachers: Sequence[Teacher],
    params: LearnParams | None = None,
    *,
    partitions: Sequence[Partitions | None] | None = None,
    weights: Sequence[float] | None = None,
    max_factor: float | None = None,
    progress: bool = True,
) -> LearnResult:
    """Learn factor tables for the pruned tensors of ``adapters`` so that base + Σ w·δ(factors) matches the teachers.

    ``model`` is the base model on the device to learn on (its parameters are frozen, and the adapters' tensors
    without learned factors are merged into it in place). The loss of a step is the mean over ``teachers`` of their
    loss per position (``Teacher.loss``: KL, or the student's entropy for ``EntropyTarget``) on one training batch
    of each; every ``learn_eval_every`` steps the held-out loss is measured and the factors with the lowest one are
    returned (step 0 = the starting factors: the stored tables, else 1). Factors stay in ``[0, max_factor]``
    (no upper bound by default). ``partitions[a]`` gives DPA partition ids of adapter ``a`` (default: the ids
    stored in it). ``params.learn_dense`` also learns a table (one factor per row; per vector for 1-D tensors) for
    every tensor the adapters store dense outside the pruning scope (embeddings, ``lm_head``, norms), otherwise added
    with factor 1 (``Student(dense=True)``). Seeded: two runs on the CPU give identical factors.
    """
    if not adapters or not teachers:
        raise ValueError("learn_factors needs at least one adapter and one teacher")
    if len({t.objective for t in teachers}) > 1:
        raise ValueError(f"teachers mix objectives {sorted({t.objective for t in teachers})}; use one kind")
    params = params or LearnParams()
    started = time.perf_counter()
    student = Student(model, adapters, params.learn_granularity, partitions, weights, dense=params.learn_dense)
    generator = torch.Generator().manual_seed(params.learn_seed)
    optimizer = torch.optim.Adam(student.parameters, lr=params.learn_lr) if student.parameters else None
    queues: list[list[int]] = [[] for _ in teachers]
    best = (student.heldout_kl(teachers), 0, student.tables())
    heldout, losses, stopped, waited = [(0, best[0])], [], None, 0
    bar = progress_bar(range(1, params.learn_steps + 1), desc="learning factors", unit="step", disable=not progress)
    for step in bar:
        if optimizer is None:
            break
        optimizer.zero_grad()
        weights_now = student.params()
        loss = torch.zeros((), device=model_device(model))
        for queue, teacher in zip(queues, teachers):
            if not queue:
                queue.extend(_order(len(teacher.train), generator))
            batch = teacher.train[queue.pop(0)]
            loss = loss + teacher.loss(batch, _log_probs(model, batch.ids, batch.mask, weights_now)) / batch.positions
        loss = loss / len(teachers)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for parameter in student.parameters:
                parameter.clamp_(min=0.0, max=max_factor)
        losses.append(loss.item())
        if step % params.learn_eval_every == 0 or step == params.learn_steps:
            kl = student.heldout_kl(teachers)
            heldout.append((step, kl))
            bar.set_postfix_str(f"train KL {losses[-1]:.4g} held-out KL {kl:.4g}")
            if kl < best[0]:
                best, waited = (kl, step, student.tables()), 0
            else:
                waited += 1
                if params.learn_patience is not None and waited >= params.learn_patience:
                    stopped = "patience"
                    break
    bar.close()
    settings = {
        "strategy": "learned",
        "objective": teachers[0].objective,
        "max_factor": max_factor,
        **{k.removeprefix("learn_"): v for k, v in asdict(params).items()},
    }
    return LearnResult(
        best[2],
        losses,
        heldout,
        best[1],
        len(losses),
        time.perf_counter() - started,
        settings,
        [t.describe() for t in teachers],
        stopped,
    )


def factor_bytes(factors: dict[str, torch.Tensor]) -> int:
    """Stored size of factor tables (float32)."""
    return sum(4 * t.numel() for t in factors.values())


__all__ = [
    "GRANULARITIES",
    "EntropyTarget",
    "LearnParams",
    "LearnResult",
    "Student",
    "Teacher",
    "TeacherBatch",
    "build_teacher",
    "factor_bytes",
    "kl_divergence",
    "learn_factors",
    "mean_kl",
    "model_context",
    "split_indices",
    "teacher_from_pretrained",
]
