"""Tiny random BERT classifiers and padded batches for the encoder-baseline loss tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from kdsuite.losses.base import LossContext
from kdsuite.tracks import get_task


def tiny_bert(layers: int, width: int, heads: int, num_labels: int = 2, seed: int = 0,
              attention: str = "sdpa") -> BertForSequenceClassification:
    """A random BERT without dropout (outputs are deterministic), in eval mode."""
    config = BertConfig(vocab_size=50, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * width, max_position_embeddings=32, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=attention)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).eval()


def padded_batch(lengths: list[int], num_labels: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids padded (id 0) to the longest of `lengths`, its attention mask, labels, example indices."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (longest - n) for n in lengths])  # (B, L)
    input_ids = torch.randint(1, 50, (len(lengths), longest), generator=generator) * mask
    if num_labels == 1:
        labels = torch.rand(len(lengths), generator=generator) * 5
    else:
        labels = torch.randint(0, num_labels, (len(lengths),), generator=generator)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
            "example_index": torch.arange(len(lengths))}


def context_for(student, teacher, layer_pairs, task: str = "rte", with_architectures: bool = True) -> LossContext:
    return LossContext(
        task=get_task(task), layer_pairs=list(layer_pairs),
        student_hidden_size=student.config.hidden_size, teacher_hidden_size=teacher.config.hidden_size,
        student_architecture=student.config if with_architectures else None,
        teacher_architecture=teacher.config if with_architectures else None,
    )


def forward_both(loss, student, teacher, batch):
    """The Trainer's step: student forward, teacher forward without grad, one loss call."""
    features = {key: batch[key] for key in ("input_ids", "attention_mask")}
    student_out = student(**features, output_hidden_states=loss.needs_hidden_states)
    with torch.no_grad():
        teacher_out = teacher(**features, output_hidden_states=loss.needs_hidden_states)
    return student_out, teacher_out, loss(student_out, teacher_out, batch)
