"""Instruction data in the Dolly format (`instruction`, `context`, `response`) for causal LMs.

Source: a local JSONL file (`dataset.path`, one object per line), else the hub dataset
(`databricks/databricks-dolly-15k`). Split as the FDD/MiniLLM papers do: a seeded shuffle, then
`validation` and `test` (500 each) and up to 14,000 `train` examples.

Tokenised examples are `prompt + response + eos`, with `labels = -100` on the prompt so the loss
counts response tokens only. Prompts longer than `max_prompt_length` keep their LAST tokens (the
"### Response:" cue must survive); the whole sequence is cut at `max_seq_length` (the response
end goes first). Nothing is padded here: the collator pads per batch.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import datasets
from omegaconf import DictConfig

from kdsuite.tracks.base import IGNORE_INDEX

log = logging.getLogger(__name__)

FIELDS = ("instruction", "context", "response")


@dataclass(frozen=True)
class Instruction:
    instruction: str
    context: str
    response: str


def read_jsonl(path: str | Path) -> list[Instruction]:
    """Every line of a Dolly-format JSONL file; `context` may be missing or empty."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset.path {str(path)!r} is not a file: give a JSONL file with one "
            f"{{instruction, context, response}} object per line, or dataset.path=null for the hub"
        )
    examples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [field for field in ("instruction", "response") if not isinstance(row.get(field), str)]
            if missing:
                raise ValueError(f"{path}:{number}: missing text field(s) {missing}; a row needs {list(FIELDS)}")
            examples.append(Instruction(row["instruction"], row.get("context") or "", row["response"]))
    return examples


def read_hub(name: str) -> list[Instruction]:
    """The hub dataset's single `train` split (needs network access to the hub)."""
    rows = datasets.load_dataset(name, split="train")
    return [Instruction(r["instruction"], r.get("context") or "", r["response"]) for r in rows]


def split_examples(examples: list[Instruction], sizes: DictConfig | dict, seed: int) -> dict[str, list[Instruction]]:
    """Seeded shuffle, then `validation`, `test`, and `train` (the rest, at most `sizes.train`)."""
    held_out = int(sizes["validation"]) + int(sizes["test"])
    if len(examples) <= held_out:
        raise ValueError(
            f"{len(examples)} examples cannot give validation={sizes['validation']} and "
            f"test={sizes['test']} plus a training set: lower dataset.split_sizes"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    shuffled = [examples[i] for i in order]
    validation_end = int(sizes["validation"])
    train = shuffled[held_out:]
    if sizes.get("train") is not None:
        train = train[: int(sizes["train"])]
    return {"validation": shuffled[:validation_end], "test": shuffled[validation_end:held_out], "train": train}


def load_splits(dataset_cfg: DictConfig, hub_name: str) -> dict[str, list[Instruction]]:
    examples = read_jsonl(dataset_cfg.path) if dataset_cfg.path else read_hub(hub_name)
    return split_examples(examples, dataset_cfg.split_sizes, dataset_cfg.split_seed)


def check_data_available(dataset_cfg: DictConfig) -> None:
    """Fail before any long work on a bad path or lengths (the hub is checked on load)."""
    if dataset_cfg.path and not Path(dataset_cfg.path).expanduser().is_file():
        read_jsonl(dataset_cfg.path)  # raises the explanatory error
    if not 0 < dataset_cfg.max_prompt_length < dataset_cfg.max_seq_length:
        raise ValueError(
            f"dataset.max_prompt_length={dataset_cfg.max_prompt_length} must be positive and below "
            f"dataset.max_seq_length={dataset_cfg.max_seq_length} (the response needs room)"
        )


def format_prompt(example: Instruction, template: DictConfig | dict) -> str:
    """The prompt text: `template.with_context` when the example has a context, else `template.plain`."""
    if example.context.strip():
        return template["with_context"].format(instruction=example.instruction, context=example.context)
    return template["plain"].format(instruction=example.instruction)


def prepare_tokenizer(tokenizer):
    """Make sure the tokenizer can end responses and pad batches: eos falls back to the separator
    token (BERT-style vocabularies), pad to eos (GPT-2 has none)."""
    if tokenizer.eos_token is None:
        if tokenizer.sep_token is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither an eos nor a sep token")
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


CHAT_TEMPLATE = "chat"  # dataset.template: the tokenizer's own chat template instead of a text template


def with_chat_template(tokenizer, chat_template: str, who: str):
    """A copy of `tokenizer` whose chat template is `chat_template` (Jinja, as `chat_template` in a
    tokenizer_config.json), logged. The copy leaves the tokenizer that other runs of the process
    share (`models._tokenizer_at` caches by location) as it was.

    The choice (issue 34): each model writes its prompt with its own chat template. A tokenizer
    without one (MiniLM's WordPiece, the real pair's student) is given one explicitly, by the
    student's config (`student.chat_template`), instead of falling back silently to a text
    template: the prompt format the student learns is part of what the run trains, so it is in the
    config and the run's identity."""
    had = getattr(tokenizer, "chat_template", None)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = chat_template
    log.info("%s tokenizer %r: chat template from the config (%s)", who, tokenizer.name_or_path,
             "replacing its own" if had else "it has none of its own")
    return tokenizer


def chat_prompt(example: Instruction, tokenizer) -> str:
    """The prompt as the tokenizer's chat template writes one user turn (the context, if any,
    after the instruction), ending with the assistant's generation cue."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"dataset.template={CHAT_TEMPLATE!r} needs a tokenizer with a chat template; "
            f"{tokenizer.name_or_path!r} has none: give a text template (with_context / plain), or, for a "
            f"student with its own tokenizer (loss=uld), its chat template as student.chat_template"
        )
    content = f"{example.instruction}\n\n{example.context}" if example.context.strip() else example.instruction
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def prompt_ids(example: Instruction, tokenizer, template, max_prompt_length: int) -> list[int]:
    """Token ids of the prompt (with the tokenizer's BOS when it has a distinct one), keeping the
    last `max_prompt_length` tokens. With `template="chat"` the chat template writes the prompt,
    special tokens included, and no BOS is added."""
    if template == CHAT_TEMPLATE:
        ids = tokenizer(chat_prompt(example, tokenizer), add_special_tokens=False)["input_ids"]
        return ids[-max_prompt_length:]
    ids = tokenizer(format_prompt(example, template), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None and bos != tokenizer.eos_token_id else []
    return prefix + ids[-(max_prompt_length - len(prefix)):]


def tokenize_examples(
    examples: list[Instruction], tokenizer, template, max_seq_length: int, max_prompt_length: int,
    max_samples: int | None = None,
) -> datasets.Dataset:
    """`input_ids`, `attention_mask`, `labels` (-100 on the prompt) and `example_index`."""
    kept = examples if max_samples is None else examples[:max_samples]
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "example_index": []}
    for index, example in enumerate(kept):
        prompt = prompt_ids(example, tokenizer, template, max_prompt_length)
        response = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + response)[:max_seq_length]
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append([IGNORE_INDEX] * len(prompt) + ids[len(prompt):])
        columns["example_index"].append(index)
    return datasets.Dataset.from_dict(columns)


def response_ids(example: Instruction, tokenizer, with_offsets: bool) -> tuple[list[int], list[tuple[int, int]] | None]:
    """The response's token ids plus eos, and with `with_offsets` each token's character span in
    the response (eos: the zero-width span at its end)."""
    encoded = tokenizer(example.response, add_special_tokens=False, return_offsets_mapping=with_offsets)
    ids = encoded["input_ids"] + [tokenizer.eos_token_id]
    if not with_offsets:
        return ids, None
    end = len(example.response)
    return ids, [tuple(span) for span in encoded["offset_mapping"]] + [(end, end)]


def tokenize_pairs(
    examples: list[Instruction], tokenizer, teacher_tokenizer, template, max_seq_length: int, max_prompt_length: int,
    max_samples: int | None = None, align_offsets: bool = True,
) -> datasets.Dataset:
    """Each example in both tokenizations, for a teacher and a student with different tokenizers
    (loss=uld): the student's `input_ids`, `attention_mask`, `labels` as `tokenize_examples` makes
    them, the teacher's as `teacher_input_ids`, `teacher_attention_mask`, `teacher_labels` (each
    with its own prompt, chat template and lengths), and with `align_offsets` each token's aligned
    group, `align_groups` / `teacher_align_groups` (-1 outside groups; `token_alignment`), from
    both tokenizers' offset mappings over the response text. `alignment_coverage` is the fraction
    of the response's characters inside groups, out of those either side's tokens reach after
    `max_seq_length` cuts the sequence (`Alignment.coverage`): over the whole response, a cut at 64
    tokens would make it measure the cut (0.19 on ShareGPT's real pair) rather than the alignment."""
    from kdsuite.losses.token_alignment import align_spans

    kept = examples if max_samples is None else examples[:max_samples]
    columns: dict[str, list] = {name: [] for name in (
        "input_ids", "attention_mask", "labels", "teacher_input_ids", "teacher_attention_mask", "teacher_labels",
        "example_index")}
    if align_offsets:
        columns.update(align_groups=[], teacher_align_groups=[], alignment_coverage=[])
    for index, example in enumerate(kept):
        sides = {}
        for side, side_tokenizer in (("student", tokenizer), ("teacher", teacher_tokenizer)):
            prompt = prompt_ids(example, side_tokenizer, template, max_prompt_length)
            response, spans = response_ids(example, side_tokenizer, align_offsets)
            ids = (prompt + response)[:max_seq_length]
            kept_spans = spans[:len(ids) - len(prompt)] if spans is not None else None
            sides[side] = (prompt, ids, kept_spans)
        for side, prefix in (("student", ""), ("teacher", "teacher_")):
            prompt, ids, _ = sides[side]
            columns[f"{prefix}input_ids"].append(ids)
            columns[f"{prefix}attention_mask"].append([1] * len(ids))
            columns[f"{prefix}labels"].append([IGNORE_INDEX] * len(prompt) + ids[len(prompt):])
        columns["example_index"].append(index)
        if align_offsets:
            alignment = align_spans(sides["student"][2], sides["teacher"][2])
            for side, prefix in (("student", ""), ("teacher", "teacher_")):
                prompt, ids, spans = sides[side]
                columns[f"{prefix}align_groups"].append([-1] * len(prompt) + alignment.group_ids(side, len(spans)))
            columns["alignment_coverage"].append(alignment.coverage)
    return datasets.Dataset.from_dict(columns)
