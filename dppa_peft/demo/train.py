"""Plain torch training loops for the demo zoo: tokenised batches, AdamW or SGD with warmup + cosine decay, tqdm."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from ..core.progress import progress_bar
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .domains import DOMAINS, generic_stream, task_split

IGNORE = -100


@dataclass(frozen=True)
class ModelShape:
    """Dimensions of the tiny Llama."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int


@dataclass(frozen=True)
class Schedule:
    """One training run: optimizer steps, batch size, peak learning rate, warmup steps, optimizer."""

    steps: int
    batch_size: int
    lr: float
    warmup: int = 20
    optimizer: str = "adamw"


def new_model(shape: ModelShape, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """A freshly initialised ``LlamaForCausalLM`` (untied embeddings) seeded by ``seed``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    generation = model.generation_config  # greedy, as the paper evaluates
    generation.do_sample = False
    generation.bos_token_id, generation.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    return model


Row = tuple[str, str]  # (context, target): the model learns the target (then EOS) after the context


def encode_batch(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row]) -> dict[str, torch.Tensor]:
    """Right-padded inputs for ``<s>context target</s>`` rows, with labels on the target tokens and EOS only."""
    backend = tokenizer.backend_tokenizer
    contexts = backend.encode_batch([context for context, _ in rows])
    wholes = backend.encode_batch([context + target for context, target in rows])
    width = 1 + max(len(whole.ids) for whole in wholes)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (context, whole) in enumerate(zip(contexts, wholes)):
        ids = torch.tensor(whole.ids + [tokenizer.eos_token_id])
        input_ids[i, : len(ids)] = ids
        labels[i, len(context.ids) : len(ids)] = ids[len(context.ids) :]
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pretraining_rows(seed: int) -> Iterator[Row]:
    """Endless rows of the generic mixture, every token learned."""
    for text in generic_stream(seed):
        yield "", text


def finetuning_rows(domain: str, seed: int, generic_share: float) -> Iterator[Row]:
    """Endless rows for one domain: its tasks' train examples in equal shares (answer learned), some generic text."""
    rng = random.Random(f"{seed}:finetune:{domain}")
    pools = [task_split(task, "train") for task in DOMAINS[domain]]
    generic = pretraining_rows(rng.randrange(2**31))
    while True:
        if rng.random() < generic_share:
            yield next(generic)
        else:
            example = rng.choice(rng.choice(pools))
            yield example.prompt, " " + example.answer


def _optimizer(model: LlamaForCausalLM, schedule: Schedule) -> torch.optim.Optimizer:
    if schedule.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=schedule.lr, betas=(0.9, 0.98), weight_decay=0.0)
    if schedule.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {schedule.optimizer!r}; expected 'adamw' or 'sgd'")


def _lr_factor(schedule: Schedule, step: int) -> float:
    """Linear warmup, then cosine decay to 5% of the peak."""
    if step < schedule.warmup:
        return (step + 1) / schedule.warmup
    done = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done))


def train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterator[Row],
    schedule: Schedule,
    desc: str,
    progress: bool = True,
) -> float:
    """Train all parameters in place; returns the mean loss of the last 10% of steps."""
    optimizer = _optimizer(model, schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(schedule, step))
    model.train()
    tail: list[float] = []
    bar = progress_bar(range(schedule.steps), desc=desc, disable=not progress)
    for step in bar:
        batch = encode_batch(tokenizer, [next(rows) for _ in range(schedule.batch_size)])
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step >= schedule.steps - max(1, schedule.steps // 10):
            tail.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return sum(tail) / len(tail)
