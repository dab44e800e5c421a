"""A word-level tokenizer over the synthetic vocabulary, wrapped for transformers and lm-eval.

Words keep their leading space as a ``▁`` prefix (Metaspace), digits are single tokens and punctuation is split
off, so decoding restores the text exactly and numbers of any size are spelled digit by digit. ``encode`` adds a
BOS token (as LLaMA does); lm-eval's HFLM relies on that default. ``<unk>`` and ``<pad>`` exist up front, so
lm-eval never adds a token beyond the model's vocabulary.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .domains import vocabulary_texts

UNK, PAD, BOS, EOS = "<unk>", "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (UNK, PAD, BOS, EOS)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(),
        ]
    )


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The demo tokenizer: a deterministic vocabulary (special tokens first, then sorted pieces)."""
    pre = _pre_tokenizer()
    pieces = {piece for text in vocabulary_texts() for piece, _ in pre.pre_tokenize_str(text)}
    pieces.add("▁")  # a lone space before digits
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(sorted(pieces - set(SPECIAL_TOKENS))))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, model_max_length=256
    )
