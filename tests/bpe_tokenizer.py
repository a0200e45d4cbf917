"""A second, different tokenizer for tests, trained here with the `tokenizers` library: a small
byte-level BPE (GPT-2's scheme) on a few sentences, so that tiny random models can have different
vocabularies from MiniLM's WordPiece with no download."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "What color is the apple? The apple is red.",
    "What color is the sky? The sky is blue.",
    "What color is the grass? The grass is green.",
    "What color is the snow? The snow is white, unbelievable as it seems.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: ### Input: ### Response:",
    "Hello, world! Tokenizers cut words into pieces; different tokenizers cut them differently.",
]


def train_bpe(vocab_size: int = 300, folder: Path | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE of about `vocab_size` pieces with `</s>` (eos) and `<pad>`; saved to
    `folder` when given, so that a config can name it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>")
    if folder is not None:
        wrapped.save_pretrained(folder)
    return wrapped
