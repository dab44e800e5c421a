"""Calibration prompts for the data-driven DPA objectives (``kl``, learned amplification; docs/algorithms.md §11.3).

Two sources, no labels needed:

- a file: ``.txt`` (one prompt per non-empty line) or ``.jsonl`` / ``.json`` (one JSON object per line, the prompt in
  ``text_field``, default ``"text"``);
- lm-eval task documents: the task's evaluation docs rendered by its ``doc_to_text`` (pass the *dev* variants, e.g.
  ``demo_math_add_dev``, never the split you report).

Every prompt remembers where it came from (``file:line`` or ``task[doc]``) so that errors name it, and
``check_lengths`` refuses prompts that do not fit the model's context with the continuation, before any model runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.choices import DEFAULT_TEXT_FIELD
from ..core.errors import UserError

JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Prompt:
    """One calibration prompt and where it came from (``path:line`` or ``task[index]``)."""

    text: str
    source: str

    @property
    def origin(self) -> str:
        """The file or task the prompt came from (``source`` without its line or document number)."""
        if self.source.endswith("]") and "[" in self.source:
            return self.source[: self.source.rindex("[")]
        return self.source.rsplit(":", 1)[0] if ":" in self.source else self.source


def read_prompts(path: str | os.PathLike, text_field: str = DEFAULT_TEXT_FIELD) -> list[Prompt]:
    """The prompts of a calibration file; an empty file or a line without ``text_field`` is a ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"calibration file {path} not found; pass a .txt (one prompt per line) or .jsonl file")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix not in JSONL_SUFFIXES:
            prompts.append(Prompt(line, f"{path}:{number}"))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(
                f"{path}:{number} is not valid JSON; a .jsonl calibration file holds one JSON object per line"
            ) from None
        if not isinstance(row, dict) or text_field not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise UserError(
                f"{path}:{number} has no {text_field!r} field (found {keys}); pass the field holding "
                "the prompt with --text-field"
            ) from None
        prompts.append(Prompt(str(row[text_field]), f"{path}:{number}"))
    if not prompts:
        raise UserError(f"calibration file {path} holds no prompts; write one prompt per line")
    return prompts


def task_prompts(tasks: Sequence[str], include_path: Iterable[str | Path] = ()) -> list[Prompt]:
    """The evaluation documents of lm-eval ``tasks`` (use their dev variants) as prompts (``doc_to_text``)."""
    from lm_eval.tasks import get_task_dict

    from ..lmeval.tasks import task_manager

    if not tasks:
        raise UserError("pass calibration prompts: a file (--calibration) or lm-eval dev tasks (--tasks)")
    prompts = []
    for name, task in _flatten(get_task_dict(list(tasks), task_manager(extra_paths=include_path))):
        for index, doc in enumerate(task.eval_docs):
            prompts.append(Prompt(str(task.doc_to_text(doc)), f"{name}[{index}]"))
    if not prompts:
        raise UserError(f"lm-eval tasks {list(tasks)} have no documents to calibrate on")
    return prompts


def _flatten(tasks: dict[Any, Any]) -> list[tuple[str, Any]]:
    """(name, task) pairs of a possibly nested lm-eval task dict (groups hold dicts of tasks)."""
    out = []
    for key, value in tasks.items():
        if isinstance(value, dict):
            out += _flatten(value)
        else:
            out.append((getattr(key, "group_name", None) or str(key), value))
    return out


def check_lengths(prompts: Sequence[Prompt], tokenizer: Any, context: int, continuation_tokens: int) -> list[list[int]]:
    """Token ids of every prompt; a prompt with no tokens or longer than ``context − continuation_tokens`` is a
    ``UserError`` naming its source."""
    limit = context - continuation_tokens
    out = []
    for prompt in prompts:
        ids = list(tokenizer(prompt.text)["input_ids"])
        if not ids:
            raise UserError(f"calibration prompt {prompt.source} has no tokens; remove the empty prompt")
        if len(ids) > limit:
            raise UserError(
                f"calibration prompt {prompt.source} has {len(ids)} tokens, but the model's context of "
                f"{context} leaves {limit} after {continuation_tokens} continuation tokens; shorten it "
                "or lower the continuation length"
            )
        out.append(ids)
    return out
