"""The DPA settings (search, objective, learned factors) and ``AmplifySpec``, DPA on an existing adapter.

``PruneSpec`` (``prune/spec.py``) nests the same settings for ``prune --amplify`` (DPPA in one run).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ..core.choices import (
    DEFAULT_TEXT_FIELD,
    DEFAULT_TOL,
    DPA_METHODS,
    FULL_VOCAB_LIMIT,
    GRANULARITIES,
    LEARNED,
    OBJECTIVES,
    PARTITION_COMBINE_MODES,
    SEARCHES,
    TEACHER_TOP_K,
)
from ..core.spec import RunOptions, Source, Spec, fail, group_option, option, positive
from ..core.validate import check_finite_params

AMPLIFIED_SUFFIX = "-dpa"  # default output of ``amplify ADAPTER``: ADAPTER-dpa next to it


dpa_option = group_option("DPA search")

objective_option = group_option("DPA objective")

learn_option = group_option("learned amplification (--search learned)")

LEARN_DENSE_HELP = (
    "also learn a factor per row of the tensors stored dense outside the pruning scope (embeddings, lm_head, norms; "
    "one per 1-D tensor); needs --learn-granularity row or tensor. Default: off for one adapter (prune, amplify), on "
    "for merge --mode learned (--no-learn-dense adds them with factor 1); adamerging does not take it"
)


@dataclass(frozen=True, kw_only=True)
class AmplifyParams(Spec):
    """How DPA searches the partition factors (each field is a CLI option of ``prune --amplify`` and ``amplify``)."""

    key: ClassVar[str] = "dpa"
    combine: str = dpa_option(
        "independent",
        choices=PARTITION_COMBINE_MODES,
        help=(
            "how partition factors combine: 'independent' scales each partition by its own factor; 'max' is the "
            "released code (a partition gets the max of its factor and every later one's)"
        ),
    )
    amplify_unpruned: bool = dpa_option(
        False,
        help=(
            "also scale the tensors kept outside the pruning scope (embeddings, norms, lm_head) by the largest factor, "
            "as the released code does"
        ),
    )
    factors: list[float] | None = dpa_option(
        None,
        help=("use these factors (one per partition) and skip the search; no objective is needed"),
    )
    search: str = dpa_option(
        "default",
        choices=SEARCHES,
        help=(
            "'default' = golden-section per partition within --bounds to --tol; 'reference' = the released +0.1 greedy "
            "loop with its quirks; 'learned' = factors per output row (--learn-granularity) learned by KL distillation "
            "from --finetuned on --calibration prompts (any pruning method; one partition unless --partition-rates; "
            "implies --amplify)"
        ),
    )
    dpa_method: int = dpa_option(
        1,
        choices=DPA_METHODS,
        help=(
            "1 = progressive (later partitions absent while a factor is searched), 2 = later partitions present at "
            "factor 1"
        ),
    )
    bounds: list[float] | None = dpa_option(
        None,
        metavar="LO HI",
        help=(
            "default search: interval of every factor (default 0.5 3.0; 0.0 1.2 for methods that already rescale "
            "kept values, like DARE, where DPA reduces)"
        ),
    )
    tol: float = dpa_option(
        DEFAULT_TOL,
        help=(
            "default search: each factor ends within this distance of its optimum for a unimodal objective (sets the "
            "calls per partition: 10 on [0.5, 3.0] at 0.05)"
        ),
    )
    max_calls: int | None = dpa_option(
        None,
        help=("most objective calls in total (default search: what --tol needs; reference loop: 100)"),
    )
    reference_init: list[float] | None = dpa_option(
        None,
        help=("reference search: start factors (default 1.8 then 0 for method 1, 1.8 then 1 for method 2)"),
    )

    def validate(self) -> None:
        check_finite_params(self, "DPA")
        if self.search == LEARNED and (
            self.factors is not None
            or self.bounds is not None
            or self.reference_init is not None
            or self.max_calls is not None
        ):
            fail(
                "search='learned' learns its factors: factors, bounds, reference_init and max_calls apply to the "
                "default and reference searches only"
            )
        if self.bounds is not None and (len(self.bounds) != 2 or not 0 <= self.bounds[0] < self.bounds[1]):
            fail(f"dpa.bounds must be two numbers 0 <= LO < HI, got {self.bounds}")
        if self.search == "reference" and self.bounds is not None:
            fail("dpa.bounds apply to the default search; the reference loop has none (see reference_init)")
        if self.search == "default" and self.reference_init is not None:
            fail("dpa.reference_init applies to search='reference'; the default search uses bounds")
        if not self.tol > 0:
            fail(f"dpa.tol must be > 0, got {self.tol}")
        positive(self, "max_calls")
        if self.factors is not None and any(not (math.isfinite(f) and f >= 0) for f in self.factors):
            fail(f"dpa.factors must be finite numbers >= 0, got {self.factors}")


@dataclass(frozen=True, kw_only=True)
class ObjectiveParams(Spec):
    """What the DPA search maximises (the provided objectives; the API also takes a callable)."""

    key: ClassVar[str] = "dpa_objective"
    objective: str = objective_option(
        "kl",
        choices=OBJECTIVES,
        help=(
            "'kl' = -KL(dense fine-tune || candidate) of next-token distributions on --calibration prompts (no "
            "labels); 'tasks' = Domain-Ratio (geometric mean of task score / dense score) of lm-eval --tasks on their "
            "dev split"
        ),
    )
    calibration: str | None = objective_option(
        None,
        metavar="FILE",
        help=(
            "kl and learned: calibration prompts, a .jsonl/.json file with a --text-field per line or a plain text file "
            "with one prompt per line"
        ),
    )
    text_field: str = objective_option(
        DEFAULT_TEXT_FIELD,
        help=("the JSON field holding the prompt in a .jsonl/.json --calibration file"),
    )
    continuation_tokens: int = objective_option(
        8,
        help=("kl: greedy tokens the dense fine-tune appends to each prompt; they are scored too"),
    )
    max_length: int = objective_option(128, help=("kl: prompts are cut to max_length - continuation_tokens tokens"))
    batch_size: int = objective_option(8, help="sequences per forward pass (kl) or lm-eval batch size")
    tokenizer: str | None = objective_option(
        None,
        help=("tokenizer folder or Hub id (default: the fine-tuned model's, else the base model's)"),
    )
    tasks: list[str] | None = objective_option(
        None, help=("tasks: lm-eval task (or group) names on a dev split, e.g. demo_math_dev")
    )
    include_path: list[str] | None = objective_option(None, help=("tasks: extra folders with lm-eval task YAMLs"))
    metric: str = objective_option("acc", help="tasks: the lm-eval metric each task reports, e.g. acc")
    limit: int | None = objective_option(None, help="tasks: evaluate at most this many documents per task")
    split: str = objective_option(
        "dev",
        help=("tasks: the name of the split the --tasks read, recorded in the adapter config"),
    )

    def validate(self) -> None:
        positive(self, "max_length", "batch_size", "limit")
        positive(self, "continuation_tokens", minimum=0)
        if self.continuation_tokens >= self.max_length:
            fail(
                f"dpa_objective.continuation_tokens ({self.continuation_tokens}) must be below max_length "
                f"({self.max_length})"
            )

    def require_inputs(self, finetuned: Source | None) -> None:
        """The inputs a search with this objective needs (checked before any pruning)."""
        if finetuned is None:
            fail(
                f"the {self.objective!r} objective compares against the dense fine-tuned model; pass finetuned "
                "(--finetuned)"
            )
        if self.objective == "kl" and self.calibration is None:
            fail("the kl objective needs calibration prompts (--calibration FILE)")
        if self.objective == "tasks" and not self.tasks:
            fail("the tasks objective needs lm-eval task names (--tasks)")


@dataclass(frozen=True, kw_only=True)
class LearnParams(Spec):
    """Settings of learned amplification (used with ``search='learned'``)."""

    key: ClassVar[str] = "learn"
    learn_granularity: str = learn_option(
        "row",
        choices=GRANULARITIES,
        help="what one learned factor covers: 'row' = each output row of each pruned "
        "matrix (per partition), 'tensor' = each pruned tensor, 'partition' = each "
        "DPA partition, 'block' = each decoder block, 'global' = the whole adapter",
    )
    learn_steps: int = learn_option(60, help="Adam steps (one calibration batch per teacher each)")
    learn_lr: float = learn_option(0.2, help="Adam learning rate of the factors (they start at 1)")
    learn_heldout: float = learn_option(
        0.2,
        help=("fraction of the calibration prompts held out for early stopping and the reported KL"),
    )
    learn_eval_every: int = learn_option(10, help="steps between held-out KL evaluations")
    learn_patience: int | None = learn_option(
        None,
        help=(
            "stop after this many held-out evaluations without improvement (default: run every step); the factors "
            "with the lowest held-out KL are kept either way"
        ),
    )
    learn_top_k: int | None = learn_option(
        None,
        help=(
            f"teacher log-probs cached per position (default: the full vocabulary up to {FULL_VOCAB_LIMIT} tokens, "
            f"else the top {TEACHER_TOP_K}, renormalised)"
        ),
    )
    learn_seed: int = learn_option(0, help="seed of the held-out split and the batch order")
    learn_dense: bool = learn_option(False, help=LEARN_DENSE_HELP)

    def validate(self) -> None:
        if self.learn_steps < 0 or self.learn_eval_every < 1:
            fail(
                f"learn_steps must be >= 0 and learn_eval_every >= 1, got {self.learn_steps} and "
                f"{self.learn_eval_every}"
            )
        if not 0.0 < self.learn_heldout < 1.0:
            fail(f"learn_heldout must be a fraction in (0, 1), got {self.learn_heldout}")
        if self.learn_lr <= 0 or (self.learn_top_k is not None and self.learn_top_k < 1):
            fail(f"learn_lr must be > 0 and learn_top_k >= 1, got {self.learn_lr} and {self.learn_top_k}")
        if self.learn_dense and self.learn_granularity not in ("row", "tensor"):
            fail(
                "learn_dense learns a table per dense tensor: use --learn-granularity row or tensor with it, or "
                "turn it off (drop --learn-dense; --no-learn-dense with merge --mode learned, where it is on by "
                "default)"
            )


def check_learn(spec: Any) -> None:
    """The learn_* options only with search='learned'."""
    if spec.dpa.search != LEARNED and spec.learn != LearnParams():
        fail("the learn_* options (--learn-*) apply to search='learned' (--search learned)")


PARTITION_HELP = (
    "DPA partition boundaries as pruning rates, most important first, ending at the target rate "
    "(default: 0.9 0.8 ... down to the rate; rate 0.9 gives one partition)"
)


def split_dpa_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The nested DPA specs (``dpa``, ``dpa_objective``, ``learn``) from flat field names, and the options left
    (method parameters)."""
    nested: dict[str, Any] = {}
    for key, cls in (("dpa", AmplifyParams), ("dpa_objective", ObjectiveParams), ("learn", LearnParams)):
        names = {f.name for f in dataclasses.fields(cls)}
        nested[key] = cls(**{k: options.pop(k) for k in list(options) if k in names})
    return nested, options


@dataclass(frozen=True, kw_only=True)
class AmplifySpec(RunOptions):
    """DPA on an existing adapter: partitions, a factor search, and the amplified adapter written to ``out``."""

    key: ClassVar[str] = "amplify"
    adapter: Source = option(positional=True, help="adapter folder or Hub id (from `dppa-peft prune`)")
    out: str | None = option(
        None, help=f"output adapter folder (default: ADAPTER{AMPLIFIED_SUFFIX} next to a local ADAPTER folder)"
    )
    base: Source | None = option(None, help="base model: folder or Hub id (default: the adapter's base)")
    finetuned: Source | None = option(
        None, help=("the dense fine-tuned model the objective compares with (needed by kl and tasks)")
    )
    partition_rates: list[float] | None = dpa_option(None, help=PARTITION_HELP)
    dpa: AmplifyParams = option(default_factory=AmplifyParams, help="DPA search settings")
    dpa_objective: ObjectiveParams = option(default_factory=ObjectiveParams, help="DPA objective settings")
    learn: LearnParams = option(default_factory=LearnParams, help="learned amplification settings")
    overwrite: bool = option(False, help="replace --out if it exists")

    def validate(self) -> None:
        adapter = Source.of(self.adapter)
        out = self.out
        if out is None:
            if adapter.local_dir is None:
                fail(
                    f"amplify.out: {adapter.ref} is not a local folder, so there is no default output; pass out (--out)"
                )
            out = str(adapter.local_dir.with_name(adapter.local_dir.name + AMPLIFIED_SUFFIX))
        self._set(
            adapter=adapter,
            out=str(out),
            base=None if self.base is None else Source.of(self.base),
            finetuned=None if self.finetuned is None else Source.of(self.finetuned),
        )
        check_learn(self)

    def check_search_inputs(self) -> None:
        """Without given factors: the inputs the named objective needs (before any work)."""
        if self.dpa.factors is None and self.dpa.search != LEARNED:
            self.dpa_objective.require_inputs(self.finetuned)

    @classmethod
    def build(
        cls,
        adapter: Any,
        out: Any = None,
        *,
        finetuned: Any = None,
        base: Any = None,
        revision: str | None = None,
        base_revision: str | None = None,
        adapter_revision: str | None = None,
        **options: Any,
    ) -> AmplifySpec:
        """The spec of the keyword API (``revision`` is the fine-tune's, as in ``prune``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        spec_options = {k: options.pop(k) for k in list(options) if k in fields}
        nested, rest = split_dpa_options(options)
        if rest:
            fail(
                f"amplify: no option named {sorted(rest)}; the options are the fields of AmplifySpec, "
                "AmplifyParams, ObjectiveParams and LearnParams (see `dppa-peft amplify --help`)"
            )
        return cls(
            adapter=Source.of(adapter, adapter_revision),
            out=None if out is None else str(out),
            finetuned=None if finetuned is None else Source.of(finetuned, revision),
            base=None if base is None else Source.of(base, base_revision),
            **nested,
            **spec_options,
        )


class DpaRun(Protocol):
    """What a DPA run reads of its spec (``AmplifySpec``, or ``PruneSpec`` with ``amplify``)."""

    @property
    def partition_rates(self) -> list[float] | None: ...

    @property
    def dpa(self) -> AmplifyParams: ...

    @property
    def dpa_objective(self) -> ObjectiveParams: ...

    @property
    def learn(self) -> LearnParams: ...

    @property
    def finetuned(self) -> Source | None: ...

    @property
    def device(self) -> str: ...

    @property
    def dtype(self) -> str: ...
