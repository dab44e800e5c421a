"""DPA objectives: callables ``model -> score``, higher is better (docs/algorithms.md §10.8).

- ``kl``: −KL(dense fine-tuned ‖ candidate) of next-token distributions over calibration prompts and the fine-tuned
  model's own greedy continuations of them; no labels. The dense distributions are computed once and cached
  (``positions × vocabulary`` fp32 values on the CPU).
- ``tasks``: Domain-Ratio, the geometric mean over lm-eval tasks of candidate score / dense fine-tuned score, on the
  tasks' dev split; the dense scores are computed once. Never tune on the split you report.
- any Python callable ``model -> float``; an optional ``describe() -> dict`` (or ``name`` / ``split`` attributes)
  is recorded in the adapter config.

The candidate model is evaluated as it is (in eval mode, without gradients); objectives must not change it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..io.models import load_on_device, load_tokenizer
from ..core.errors import UserError
from .spec import ObjectiveParams
from ..core.spec import Source
from ..lmeval.ratios import domain_ratio, task_ratio
from ..lmeval.scoring import TaskScorer
from .calibration import DEFAULT_TEXT_FIELD, Prompt, read_prompts, task_prompts

Objective = Callable[["nn.Module"], float]


def read_texts(path: str | os.PathLike, text_field: str = DEFAULT_TEXT_FIELD) -> list[str]:
    """Calibration texts of a file (see ``calibration.read_prompts``)."""
    return [prompt.text for prompt in read_prompts(path, text_field)]


def calibration_prompts(params: ObjectiveParams) -> list[Prompt]:
    """The calibration prompts of ``params``: the --calibration file, else the docs of the lm-eval --tasks."""
    if params.calibration is not None:
        return read_prompts(params.calibration, params.text_field)
    if params.tasks:
        return task_prompts(params.tasks, params.include_path or ())
    raise UserError(
        "learned amplification needs unlabeled prompts: --calibration FILE (.txt or .jsonl) or lm-eval "
        "dev tasks (--tasks NAME_dev ...)"
    )


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def log_probs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    """fp32 log-probs at the real positions of a padded batch (``params`` replace model parameters)."""
    device = model_device(model)
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    output = model(**kwargs) if params is None else torch.func.functional_call(model, params, (), kwargs, strict=False)
    return torch.log_softmax(output.logits[mask.to(device).bool()].float(), dim=-1)


class KLObjective:
    """−KL(reference ‖ candidate) of next-token distributions, averaged over every scored token position."""

    name = "kl"

    def __init__(
        self,
        reference: nn.Module,
        tokenizer: Any,
        texts: Sequence[str],
        continuation_tokens: int = 8,
        max_length: int = 128,
        batch_size: int = 8,
        source: str | None = None,
    ) -> None:
        self.source = source
        self.continuation_tokens = continuation_tokens
        self.max_length = max_length
        pad = pad_token_id(tokenizer)
        with torch.no_grad():
            sequences = [self._continue(reference, tokenizer, text) for text in texts]
            self.batches = [pad_batch(sequences[i : i + batch_size], pad) for i in range(0, len(sequences), batch_size)]
            self.reference = [log_probs(reference, ids, mask).cpu() for ids, mask in self.batches]
        self.positions = sum(int(mask.sum()) for _, mask in self.batches)

    def _continue(self, model: nn.Module, tokenizer: Any, text: str) -> torch.Tensor:
        """The prompt's tokens plus the model's greedy continuation (stops early at EOS)."""
        ids = tokenizer(text)["input_ids"][: self.max_length - self.continuation_tokens]
        if not ids:
            raise ValueError(f"calibration text {text!r} has no tokens")
        sequence = torch.tensor([ids], device=model_device(model))
        for _ in range(self.continuation_tokens):
            token = model(input_ids=sequence).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, token], dim=1)
            if tokenizer.eos_token_id is not None and int(token) == tokenizer.eos_token_id:
                break
        return sequence[0].cpu()

    def __call__(self, model: nn.Module) -> float:
        total = 0.0
        with torch.no_grad():
            for (ids, mask), reference in zip(self.batches, self.reference):
                log_q = log_probs(model, ids, mask)
                log_p = reference.to(log_q.device)
                total += float((log_p.exp() * (log_p - log_q)).sum())
        return -total / self.positions

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.source,
            "texts": sum(len(ids) for ids, _ in self.batches),
            "positions": self.positions,
            "continuation_tokens": self.continuation_tokens,
            "max_length": self.max_length,
        }


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are right-padded with: the tokenizer's pad token, else its EOS token, else 0."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def pad_batch(sequences: Sequence[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token sequences into (input_ids, attention_mask)."""
    width = max(s.numel() for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : sequence.numel()] = sequence
        mask[row, : sequence.numel()] = 1
    return ids, mask


class TaskRatioObjective:
    """Domain-Ratio (paper eq. 8) of lm-eval tasks against the dense fine-tuned model (its scores computed once)."""

    name = "tasks"

    def __init__(self, reference: nn.Module, evaluator: Any, tasks: Sequence[str], split: str = "dev") -> None:
        if not tasks:
            raise ValueError("the tasks objective needs lm-eval task names (--tasks)")
        self.evaluator = evaluator
        self.tasks = list(tasks)
        self.split = split
        self.dense_scores = evaluator.scores(reference, self.tasks)

    def __call__(self, model: nn.Module) -> float:
        scores = self.evaluator.scores(model, self.tasks)
        return domain_ratio(task_ratio(scores[t], self.dense_scores[t]) for t in self.tasks)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "tasks": self.tasks,
            "metric": self.evaluator.metric,
            "limit": self.evaluator.limit,
            "dense_scores": self.dense_scores,
        }


def describe_objective(objective: Objective) -> dict[str, Any]:
    """What the adapter config records about an objective: at least its name and data split."""
    if hasattr(objective, "describe"):
        return dict(objective.describe())
    name = getattr(objective, "name", None) or getattr(objective, "__name__", type(objective).__name__)
    return {"name": str(name), "split": getattr(objective, "split", None)}


def build_objective(
    params: ObjectiveParams,
    finetuned: Source | str | os.PathLike | None,
    base: Source | str | os.PathLike | None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    revision: str | None = None,
    token: str | bool | None = None,
) -> Objective:
    """The ``kl`` or ``tasks`` objective against the dense fine-tuned model (loaded once, then released)."""
    source = None if finetuned is None else Source.of(finetuned, revision)
    params.require_inputs(source)
    assert source is not None
    texts: list[str] = []
    if params.objective == "kl":
        assert params.calibration is not None  # checked by require_inputs
        texts = read_texts(params.calibration, params.text_field)
    base_ref = None if base is None else Source.of(base).ref
    tokenizer = load_tokenizer([params.tokenizer] if params.tokenizer else [source.ref, base_ref], token=token)
    reference = load_on_device(source.ref, dtype, device, revision=source.revision, token=token)
    if params.objective == "kl":
        return KLObjective(
            reference,
            tokenizer,
            texts,
            params.continuation_tokens,
            params.max_length,
            params.batch_size,
            source=str(params.calibration),
        )
    from ..lmeval.tasks import task_manager  # imports lm-eval: only the tasks objective needs it

    scorer = TaskScorer(
        tokenizer,
        task_manager(extra_paths=params.include_path or ()),
        metric=params.metric,
        batch_size=params.batch_size,
        limit=params.limit,
    )
    return TaskRatioObjective(reference, scorer, params.tasks or [], params.split)
