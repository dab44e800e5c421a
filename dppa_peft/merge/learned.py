"""Learned merge modes: the adapters' factors are learned for their *sum*, then the factored adapters are summed.

- ``learned``: factor tables (``--learn-granularity``, default one per output row of every pruned matrix) of all N
  adapters learned jointly by distillation: the student is ``base + Σ_i δ_i(f_i)``, the teachers are the N dense
  fine-tunes, each on its own domain's calibration prompts and its greedy continuations of them (the mean over
  teachers of KL(teacher ‖ student)); no labels (``amplify.learned``, N adapters × N teachers).
- ``adamerging``: AdaMerging (Yang et al., ICLR 2024; docs/algorithms.md, AdaMerging) on the sparse deltas: one
  coefficient per adapter (``--adamerging-granularity task``) or per adapter and pruned tensor (``layer``; the
  AdaMerging code's "layer" is each tensor), learned by minimising the entropy of the merged model's next-token
  predictions on unlabeled prompts and the sum-merged model's greedy continuations of them; no teacher, no labels.
  Coefficients start at 1 (the plain sum) and stay in ``[0, adamerging_max]``.

Both run the one learning loop (``amplify.learned.learn_factors``): they differ only in the targets (dense teachers
vs ``EntropyTarget``) and the granularity. The learned tables become the adapters' ``[P, R]`` factors in memory
(``SparseDeltaAdapter.with_factors``), which every merge output then sums with the one kernel; the tensors that are not pruned
(embeddings, norms kept dense) are summed with weight 1.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..amplify.calibration import DEFAULT_TEXT_FIELD, Prompt, check_lengths, read_prompts
from ..core.errors import UserError
from ..amplify.spec import LEARN_DENSE_HELP, LearnParams
from .modes import MergeMode, register_mode

if TYPE_CHECKING:  # the learning loop and the adapter handle import peft; option parsing must not
    from ..amplify.learned import LearnResult, Teacher
    from ..format.partitions import Partitions
    from ..publish.adapter import SparseDeltaAdapter

ADAMERGING_GRANULARITIES = {"task": "global", "layer": "tensor"}


@dataclass(frozen=True)
class CalibrationParams(LearnParams):
    """The learning loop's settings plus the unlabeled prompts every learned merge mode reads."""

    calibration: list[str] | None = field(
        default=None,
        metadata={
            "help": "learned / adamerging: unlabeled calibration prompts, one file per adapter in --adapter order (.txt: "
            "one prompt per line; .jsonl: a JSON object per line with the prompt in --text-field); adamerging "
            "also takes one file for all"
        },
    )
    text_field: str = field(
        default=DEFAULT_TEXT_FIELD,
        metadata={"help": "learned / adamerging: the JSON field holding the prompt in a .jsonl calibration file"},
    )
    continuation_tokens: int = field(
        default=8,
        metadata={
            "help": "learned / adamerging: greedy tokens appended to each prompt (by the teacher, or by the summed model "
            "for adamerging); they are scored too"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "learned / adamerging: sequences per forward pass"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "learned / adamerging: tokenizer folder or Hub id (default: the base model's)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.calibration:
            raise UserError(
                "a learned merge needs unlabeled calibration prompts: --calibration FILE [FILE ...] (one "
                "file per adapter, in --adapter order)"
            )
        if self.continuation_tokens < 0 or self.batch_size < 1:
            raise UserError(
                f"continuation_tokens must be >= 0 and batch_size >= 1, got {self.continuation_tokens} "
                f"and {self.batch_size}"
            )

    def prompt_sets(self, count: int, pooled: bool) -> list[list[Prompt]]:
        """The prompts of each calibration file (one file per adapter unless ``pooled`` allows a single file)."""
        files = list(self.calibration or [])
        if len(files) != count and not (pooled and len(files) == 1):
            raise UserError(
                f"got {len(files)} calibration files for {count} adapters; pass one per adapter, in "
                "--adapter order" + (" (or one for all)" if pooled else "")
            )
        return [read_prompts(path, self.text_field) for path in files]

    def learn_params(self, **changes: Any) -> LearnParams:
        """The ``LearnParams`` part of these settings (with ``changes``)."""
        names = {f.name for f in dataclasses.fields(LearnParams)}
        return LearnParams(**{**{k: v for k, v in dataclasses.asdict(self).items() if k in names}, **changes})


@dataclass(frozen=True)
class LearnedMergeParams(CalibrationParams):
    """``learned``: per-row factors of every adapter distilled jointly from the adapters' dense fine-tunes."""

    finetuned: list[str] | None = field(
        default=None,
        metadata={
            "help": "learned: the dense fine-tune (teacher) of each adapter, in --adapter order (default: the "
            "fine-tuned model recorded in each adapter)"
        },
    )
    learn_dense: bool = field(default=True, metadata={"help": LEARN_DENSE_HELP})
    learn_partition_rates: list[float] | None = field(
        default=None,
        metadata={
            "help": "learned: split every adapter's kept entries by magnitude into partitions at these pruning rates "
            "(most important first, ending at the adapters' rate, e.g. 0.99 0.97 0.94 0.9) and learn a factor per "
            "(partition, row) instead of per row; the adapters' pruning method must rank by magnitude as DPA "
            "partitions do (default: one partition)"
        },
    )


@dataclass(frozen=True)
class AdaMergingParams(CalibrationParams):
    """``adamerging``: task- or layer-wise coefficients by entropy minimisation, label-free."""

    adamerging_granularity: str = field(
        default="task",
        metadata={
            "help": "adamerging: 'task' = one coefficient per adapter; 'layer' = one per adapter and pruned tensor",
            "choices": tuple(ADAMERGING_GRANULARITIES),
        },
    )
    adamerging_max: float = field(
        default=2.0,
        metadata={
            "help": "adamerging: coefficients are clamped to [0, adamerging_max] (they start at 1, the plain sum)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adamerging_granularity not in ADAMERGING_GRANULARITIES:
            raise UserError(
                f"unknown adamerging_granularity {self.adamerging_granularity!r}; choose one of "
                f"{tuple(ADAMERGING_GRANULARITIES)}"
            )
        if self.learn_granularity != LearnParams().learn_granularity:
            raise UserError(
                "adamerging sets its granularity with --adamerging-granularity task|layer, not --learn-granularity"
            )
        if self.learn_dense:
            raise UserError("adamerging learns coefficients of the pruned tensors only; drop --learn-dense")
        if not self.adamerging_max > 0:
            raise UserError(f"adamerging_max must be > 0, got {self.adamerging_max}")


def merge_partitions(adapter: SparseDeltaAdapter, rates: Sequence[float]) -> Partitions:
    """The magnitude partitions of ``adapter``'s kept entries at ``rates`` (``learn_partition_rates``)."""
    from ..format.partitions import adapter_partitions

    try:
        return adapter_partitions(adapter, rates)
    except ValueError as err:
        raise UserError(f"learn_partition_rates for {adapter.ref}: {err}") from None


def recorded_finetuned(adapter: SparseDeltaAdapter) -> str:
    """The dense fine-tune an adapter was pruned from (its provenance), or a ``UserError`` saying how to pass it."""
    ref = (adapter.config.provenance or {}).get("finetuned")
    if not ref:
        raise UserError(
            f"adapter {adapter.ref} records no fine-tuned model; pass the teachers with --finetuned "
            "(one per adapter, in --adapter order)"
        )
    return str(ref)


def learn_merge(
    base: str | os.PathLike,
    adapters: Sequence[SparseDeltaAdapter],
    weights: Sequence[float],
    params: LearnedMergeParams | AdaMergingParams,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    progress: bool = True,
) -> tuple[list[SparseDeltaAdapter], LearnResult]:
    """Learn the factors of ``adapters`` for their weighted sum on ``base`` (mode ``learned`` or ``adamerging``).

    Prompts are read and their lengths checked before any model runs; teachers (or, for AdaMerging, the summed
    model) are loaded one at a time, their outputs cached and the model freed before the base is loaded to learn.
    Returns the adapters with the learned tables and the learning record.
    """
    from ..amplify.candidate import load_base_model  # imports peft: the option parser imports this module
    from ..amplify.learned import EntropyTarget, build_teacher, learn_factors, model_context, teacher_from_pretrained
    from ..io.models import load_tokenizer, resize_vocabulary
    from ..format.fingerprint import check_fingerprint
    from ..io.sampling import model_sampler
    from ..core.devices import release_memory

    adamerging = isinstance(params, AdaMergingParams)
    prompt_sets = params.prompt_sets(len(adapters), pooled=adamerging)
    tokenizer = load_tokenizer([params.tokenizer] if params.tokenizer else [base])
    context = model_context(base)
    for prompts in prompt_sets:  # every prompt fits, before any model runs
        check_lengths(prompts, tokenizer, context, params.continuation_tokens)
    if isinstance(params, AdaMergingParams):  # (adamerging, narrowed for the type checker)
        from .loader import load_merged

        summed = load_merged(base, adapters, weights, progress=False).to(device)  # coefficients 1: the start
        try:
            targets: list[Teacher] = [
                EntropyTarget(
                    **vars(
                        build_teacher(
                            summed,
                            tokenizer,
                            prompts,
                            name=f"calibration {i + 1}",
                            continuation_tokens=params.continuation_tokens,
                            batch_size=params.batch_size,
                            heldout=params.learn_heldout,
                            top_k=1,
                            seed=params.learn_seed,
                        )
                    )
                )
                for i, prompts in enumerate(prompt_sets)
            ]
        finally:
            del summed  # the cached outputs are all AdaMerging needs of it
            release_memory()
        learn = params.learn_params(learn_granularity=ADAMERGING_GRANULARITIES[params.adamerging_granularity])
        bound = params.adamerging_max
        partitions: list[Partitions] | None = None
    else:
        teachers = list(params.finetuned) if params.finetuned else [recorded_finetuned(a) for a in adapters]
        if len(teachers) != len(adapters):
            raise UserError(
                f"got {len(teachers)} fine-tuned models (--finetuned) for {len(adapters)} adapters; pass "
                "one per adapter, in --adapter order"
            )
        targets = [
            teacher_from_pretrained(
                ref,
                tokenizer,
                prompts,
                continuation_tokens=params.continuation_tokens,
                batch_size=params.batch_size,
                params=params.learn_params(),
                dtype=dtype,
                device=device,
                name=str(ref),
            )
            for ref, prompts in zip(teachers, prompt_sets)
        ]
        learn, bound = params.learn_params(), None
        partitions = (
            [merge_partitions(a, params.learn_partition_rates) for a in adapters]
            if params.learn_partition_rates
            else None
        )
    model = load_base_model(base, adapters[0], dtype, device)
    for adapter in adapters[1:]:
        check_fingerprint(adapter.config, model_sampler(model), adapter.ref, str(base))
    resize_vocabulary(model, max((a.config.vocab_size or 0 for a in adapters), default=0) or None)
    try:
        result = learn_factors(
            model, adapters, targets, learn, partitions=partitions, weights=weights, max_factor=bound, progress=progress
        )
    finally:
        del model
        release_memory()
    tables = result.factors + [{} for _ in range(len(adapters) - len(result.factors))]  # adapters with no pruned tensor
    if isinstance(params, LearnedMergeParams):
        result.settings["partition_rates"] = params.learn_partition_rates
    ids = [p.ids for p in partitions] if partitions else [None] * len(adapters)
    return [a.with_factors(t, i) for a, t, i in zip(adapters, tables, ids)], result


class _LearnedMode(MergeMode):
    """A merge mode that learns the adapters' factors first (``prepare``), then sums the factored adapters.

    The learned adapters are kept for the inputs they were learned on, so one mode instance passed to several
    outputs (``merge_to_folder`` and ``merge_to_adapter``) learns once.
    """

    consensus = "sum"

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._learned: tuple[tuple[Any, ...], list[SparseDeltaAdapter], LearnResult] | None = None

    def prepare(
        self,
        base: str | os.PathLike,
        adapters: Sequence[SparseDeltaAdapter],
        weights: Sequence[float],
        *,
        device: str = "cpu",
        progress: bool = True,
    ) -> list[SparseDeltaAdapter]:
        key = (str(base), tuple(str(a.directory) for a in adapters), tuple(weights), device)
        if self._learned is None or self._learned[0] != key:
            factored, result = learn_merge(base, adapters, weights, self.params, device=device, progress=progress)
            self._learned = (key, factored, result)
        return list(self._learned[1])

    def outcome(self) -> dict[str, Any] | None:
        """The learning record (settings, loss curves, held-out loss before/after, factor statistics)."""
        return None if self._learned is None else self._learned[2].record()


@register_mode
class LearnedMode(_LearnedMode):
    name = "learned"
    summary = (
        "learned merge: per-row factors of every adapter learned jointly by KL to each adapter's dense "
        "fine-tune on its --calibration prompts, then summed"
    )
    Params = LearnedMergeParams


@register_mode
class AdaMergingMode(_LearnedMode):
    name = "adamerging"
    summary = (
        "AdaMerging: task-wise or layer-wise coefficients (--adamerging-granularity) learned by entropy "
        "minimisation on unlabeled --calibration prompts, then summed"
    )
    Params = AdaMergingParams

    def outcome(self) -> dict[str, Any] | None:
        """The learning record plus the coefficients: per adapter one number (task) or tensor -> number (layer)."""
        record = super().outcome()
        if record is None or self._learned is None:
            return record
        _, adapters, result = self._learned
        tables = result.factors + [{} for _ in range(len(adapters) - len(result.factors))]
        if self.params.adamerging_granularity == "task":
            record["coefficients"] = [float(next(iter(t.values())).reshape(-1)[0]) if t else None for t in tables]
        else:
            record["coefficients"] = [
                {name: [float(x) for x in table.reshape(-1)] for name, table in t.items()} for t in tables
            ]
        return record
