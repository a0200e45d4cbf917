"""Responses sampled from a causal LM for the prompts of a training batch, and the training batch
made of them.

A training batch (from `DataCollatorForSeq2Seq`) holds `prompt + response` rows with `labels =
-100` on the prompt and on padding, padded on either side. `batch_prompts` takes back each row's
prompt (its attended tokens up to the first labelled one); `sample_responses` continues them,
without gradient, in eval mode (no dropout), with the KV cache, in one left-padded `generate` call
per batch; `training_batch` lays `prompt + response` out right-padded with the prompt masked in
the labels, as the data's own rows are. A response ends after its first eos (kept, as the data's
responses end with eos) or at `max_new_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdsuite.tracks.base import IGNORE_INDEX


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float
    top_p: float
    max_new_tokens: int


def batch_prompts(batch: dict) -> list[torch.Tensor]:
    """Each row's prompt ids (1-D): attended positions before the first response token."""
    prompts = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        attended = mask.bool()
        row_ids, row_labels = ids[attended], labels[attended]  # padding dropped, whatever its side
        labelled = (row_labels != IGNORE_INDEX).nonzero()
        end = int(labelled[0]) if len(labelled) else len(row_ids)
        prompts.append(row_ids[:end])
    return prompts


def cut_after_eos(tokens: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """A generated row up to and including its first eos (all of it when there is none)."""
    if eos_token_id is None:
        return tokens
    ends = (tokens == eos_token_id).nonzero()
    return tokens[: int(ends[0]) + 1] if len(ends) else tokens


@torch.no_grad()
def sample_responses(model, prompts: list[torch.Tensor], settings: SamplingSettings, pad_token_id: int,
                     eos_token_id: int | None) -> list[torch.Tensor]:
    """One sampled response (1-D ids, eos included when reached) per prompt, from `model` as it is
    now: eval mode during generation, the previous mode restored after."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)  # (B, P)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)  # (B, P)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = prompt.to(device)
        attention_mask[row, width - len(prompt):] = 1
    try:
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=settings.temperature,
            top_p=settings.top_p, top_k=0, max_new_tokens=settings.max_new_tokens, use_cache=True,
            pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        )  # (B, P + new)
    finally:
        model.train(was_training)
    return [cut_after_eos(row, eos_token_id) for row in output[:, width:]]


def training_batch(prompts: list[torch.Tensor], responses: list[torch.Tensor], pad_token_id: int,
                   example_index: torch.Tensor | None = None) -> dict:
    """`input_ids`, `attention_mask`, `labels` (-100 on prompt and padding) of `prompt + response`
    rows, right-padded to the longest (and `example_index` when given)."""
    rows = [torch.cat([prompt.cpu(), response.cpu()]) for prompt, response in zip(prompts, responses)]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, L)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (B, L)
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
        labels[i, len(prompt): len(row)] = row[len(prompt):]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if example_index is not None:
        batch["example_index"] = example_index.cpu()
    return batch
