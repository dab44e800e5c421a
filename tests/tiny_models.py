"""Tiny causal LMs built in the test session (never downloaded): a base and locally fine-tuned variants."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config

VOCAB = 128
_SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)
_CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}


def tiny_config(arch: str = "llama", layers: int = 2, **shape: object) -> PretrainedConfig:
    """The config of a tiny ``arch`` model: the shared tiny shape, with ``shape`` keys overriding it."""
    return _CONFIG_CLASSES[arch](num_hidden_layers=layers, **{**_SHAPE, **shape})


def make_base(
    path: Path,
    arch: str = "llama",
    layers: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
) -> Path:
    """A randomly initialised tiny model saved as safetensors (optionally sharded)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers)).to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return path


def make_finetune(
    base: Path, path: Path, steps: int = 5, lr: float = 1e-2, seed: int = 1, max_shard_size: str | None = None
) -> Path:
    """A fine-tune of ``base`` made by a few Adam steps on random tokens (all parameters change)."""
    model = AutoModelForCausalLM.from_pretrained(base)
    dtype = next(model.parameters()).dtype
    model.float()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (4, 16), generator=generator)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(path, **kwargs)
    return path


CHAR_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")


def char_tokenizer():
    """A character-level tokenizer (specials, printable ASCII, newline: 100 ids < VOCAB) with bos/eos/pad/unk."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(CHAR_SPECIALS)}
    for char in [chr(c) for c in range(32, 127)] + ["\n"]:
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_tokenizer(path: Path) -> Path:
    """``char_tokenizer`` saved to ``path``."""
    char_tokenizer().save_pretrained(path)
    return path
