"""``EvalSpec``: what ``dppa-peft eval`` evaluates (domains, adapters, merges) and how lm-eval runs (``EvalOptions``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.choices import BACKENDS, DTYPES
from ..core.spec import Source, Spec, fail, group_option, option
from ..merge.spec import merge_mode_choices


@dataclass(frozen=True, kw_only=True)
class Domain(Spec):
    """An evaluation domain: its dense fine-tune and the lm-eval tasks that measure it."""

    key: ClassVar[str] = "domain"
    name: str = option(help="domain name")
    finetuned: Source = option(help="the domain's dense fine-tune")
    tasks: tuple[str, ...] = option(help="lm-eval tasks of the domain")

    def validate(self) -> None:
        self._set(finetuned=Source.of(self.finetuned), tasks=tuple(self.tasks))
        if not self.tasks:
            fail(f"eval: no tasks for domain {self.name!r}; pass --tasks {self.name}=TASK[,TASK]")


LM_EVAL = "lm-eval (device, dtype, batch size, few-shot, stderr, backend)"

lm_eval_option = group_option(LM_EVAL)


@dataclass(frozen=True, kw_only=True)
class EvalOptions(Spec):
    """How ``dppa-peft eval`` runs lm-eval: backend, device, dtype, batch size, few-shot, limit, stderr."""

    key: ClassVar[str] = "lm_eval"
    backend: str = lm_eval_option(
        "hf",
        choices=BACKENDS,
        help=(
            "lm-eval backend: 'hf' (adapters merged into the base at load, in memory) or 'vllm' (lm-eval's vLLM backend "
            "on a merged export written once per variant; needs the vllm extra and a GPU)"
        ),
    )
    device: str = lm_eval_option("cpu", help="torch device for the hf backend: cpu, cuda, cuda:1, ...")
    dtype: str = lm_eval_option("auto", choices=DTYPES, help="model dtype")
    device_map: str | None = lm_eval_option(
        None,
        help=("hf backend: accelerate device map for big models, e.g. 'auto' (lm-eval's parallelize=True)"),
    )
    batch_size: int = lm_eval_option(16, help="lm-eval batch size")
    num_fewshot: int | None = lm_eval_option(
        None, help=("few-shot examples per prompt (default: the task's own setting)")
    )
    limit: float | None = lm_eval_option(
        None,
        help=("evaluate only the first N examples of each task (a fraction < 1: that share of each task)"),
    )
    bootstrap_iters: int = lm_eval_option(
        1000,
        help=(
            "bootstrap iterations for the standard errors lm-eval reports (mean metrics use a closed form); 0 = no "
            "stderr"
        ),
    )
    metric: str = lm_eval_option("acc", help="metric reported per task")
    keep_merged: bool = lm_eval_option(
        False,
        help=(
            "vllm backend: keep the merged model folders (in OUT-merged/, next to OUT) instead of removing each after "
            "use"
        ),
    )
    model_args: str | None = lm_eval_option(
        None,
        help=(
            "extra lm-eval model_args for every model, KEY=VALUE[,KEY=VALUE] (e.g. "
            "gpu_memory_utilization=0.8,tensor_parallel_size=2 for vllm, max_cpu_memory=8GB for hf)"
        ),
    )

    def validate(self) -> None:
        from .backends import parse_model_args

        if self.batch_size < 1:
            fail(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            fail(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and not self.limit > 0:
            fail(f"--limit must be > 0, got {self.limit}")
        if self.bootstrap_iters < 0:
            fail(f"--bootstrap-iters must be >= 0, got {self.bootstrap_iters}")
        if self.keep_merged and self.backend != "vllm":
            fail("--keep-merged applies to --backend vllm (the hf backend writes no merged folders)")
        if self.device_map and self.backend != "hf":
            fail("--device-map applies to --backend hf (vLLM places the model itself)")
        parse_model_args(self.model_args)  # a syntax error shows before any work

    @property
    def lm_eval_limit(self) -> int | float | None:
        """lm-eval's ``limit``: a count N >= 1 as an int, a fraction below 1 as is."""
        if self.limit is None:
            return None
        return int(self.limit) if self.limit >= 1 else self.limit


@dataclass(frozen=True, kw_only=True)
class EvalSpec(Spec):
    """Evaluate the base, each domain's dense fine-tune, and pruned or merged adapters; write the report to ``out``."""

    key: ClassVar[str] = "eval"
    base: Source = option(help="base model: local folder or Hub id")
    domains: list[Domain] = option(cli=False, help="the domains (CLI: --domain NAME=FINETUNED, --tasks NAME=TASKS)")
    adapters: list[tuple[str, Source]] = option(
        default_factory=list,
        cli=False,
        help=("pruned adapters as (domain, adapter) pairs (CLI: --adapter NAME=ADAPTER)"),
    )
    merges: list[dict[str, Source]] = option(
        default_factory=list,
        cli=False,
        help=("merged variants, each domain -> adapter (CLI: --merge NAME=ADAPTER[,NAME=ADAPTER...])"),
    )
    merge_mode: str = option("sum", choices=merge_mode_choices, help="merge mode of every --merge")
    include_path: list[str] = option(
        default_factory=list,
        cli=False,
        help=("extra folders of lm-eval task YAMLs (the package's tasks are always included)"),
    )
    out: str = option(help="report folder (replaced atomically)")
    lm_eval: EvalOptions = option(default_factory=EvalOptions, help="how lm-eval runs")

    def validate(self) -> None:
        if not self.domains:
            fail("eval.domains: declare at least one domain (--domain NAME=FINETUNED with --tasks NAME=TASKS)")
        labels = [d.name for d in self.domains]
        if len(set(labels)) != len(labels):
            fail(f"eval.domains: duplicate domain names {labels}")
        named = {name for name, _ in self.adapters} | {name for merge in self.merges for name in merge}
        unknown = sorted(named - set(labels))
        if unknown:
            fail(f"eval: adapters name unknown domain(s) {unknown}; declare them with --domain NAME=FINETUNED")
        self._set(
            base=Source.of(self.base),
            out=str(self.out),
            adapters=[(name, Source.of(ref)) for name, ref in self.adapters],
            merges=[{name: Source.of(ref) for name, ref in merge.items()} for merge in self.merges],
        )
