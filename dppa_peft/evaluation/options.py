"""The options of ``dppa-peft eval`` (one dataclass; the command line is generated from its fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .backends import BACKENDS, BackendSettings, parse_model_args
from .runner import Evaluator

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EvalOptions:
    """How ``dppa-peft eval`` runs lm-eval: backend, device, dtype, batch size, few-shot, limit, stderr."""

    backend: str = field(default="hf", metadata={
        "help": "lm-eval backend: 'hf' (adapters merged into the base at load, in memory) or 'vllm' (lm-eval's vLLM "
                "backend on a merged export written once per variant; needs the vllm extra and a GPU)",
        "choices": BACKENDS})
    device: str = field(default="cpu", metadata={"help": "torch device for the hf backend: cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="auto", metadata={"help": "model dtype", "choices": DTYPES})
    device_map: str | None = field(default=None, metadata={
        "help": "hf backend: accelerate device map for big models, e.g. 'auto' (lm-eval's parallelize=True)"})
    batch_size: int = field(default=16, metadata={"help": "lm-eval batch size"})
    num_fewshot: int | None = field(default=None, metadata={"help": "few-shot examples per prompt (default: the "
                                                                    "task's own setting)"})
    limit: float | None = field(default=None, metadata={
        "help": "evaluate only the first N examples of each task (a fraction < 1: that share of each task)"})
    bootstrap_iters: int = field(default=1000, metadata={
        "help": "bootstrap iterations for the standard errors lm-eval reports (mean metrics use a closed form); "
                "0 = no stderr"})
    metric: str = field(default="acc", metadata={"help": "metric reported per task"})
    keep_merged: bool = field(default=False, metadata={
        "help": "vllm backend: keep the merged model folders (in OUT-merged/, next to OUT) instead of removing each "
                "after use"})
    model_args: str | None = field(default=None, metadata={
        "help": "extra lm-eval model_args for every model, KEY=VALUE[,KEY=VALUE] (e.g. "
                "gpu_memory_utilization=0.8,tensor_parallel_size=2 for vllm, max_cpu_memory=8GB for hf)"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise UserError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"--limit must be > 0, got {self.limit}")
        if self.bootstrap_iters < 0:
            raise UserError(f"--bootstrap-iters must be >= 0, got {self.bootstrap_iters}")
        if self.keep_merged and self.backend != "vllm":
            raise UserError("--keep-merged applies to --backend vllm (the hf backend writes no merged folders)")
        if self.device_map and self.backend != "hf":
            raise UserError("--device-map applies to --backend hf (vLLM places the model itself)")
        parse_model_args(self.model_args)  # a syntax error shows before any work

    def evaluator(self, tokenizer: Any, task_manager: Any, work_dir: Path | None = None) -> Evaluator:
        """The :class:`Evaluator` these options describe (``work_dir``: where the vllm backend writes merges)."""
        limit = int(self.limit) if self.limit is not None and self.limit >= 1 else self.limit
        backend = BackendSettings(self.backend, dtype=self.dtype, device_map=self.device_map, work_dir=work_dir,
                                  keep_merged=self.keep_merged, model_args=parse_model_args(self.model_args))
        return Evaluator(tokenizer, task_manager, metric=self.metric, batch_size=self.batch_size, limit=limit,
                         num_fewshot=self.num_fewshot, device=self.device, bootstrap_iters=self.bootstrap_iters,
                         backend=backend)
