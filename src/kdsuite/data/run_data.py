"""What a run gets from its data, on either track: tokenised train/validation sets, the collator
that pads them per batch, how they are scored, and (instruction track) the prompts whose sampled
responses are scored.

GLUE tasks come from `glue.py` (TSV or hub) and are scored with GLUE's metrics; instruction data
comes from `instructions.py` (JSONL or hub) and is scored by ROUGE-L of sampled responses
(`kdsuite.generation`), with the validation loss reported during training. Each track
(`kdsuite.tracks`) calls its own functions here; `load_run_data`, `data_digests` and
`check_data` ask the task's track.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

from kdsuite.data import glue, instructions, sharegpt
from kdsuite.generation import GenerationSet
from kdsuite.metrics import glue_metrics
from kdsuite.tracks.base import IGNORE_INDEX
from kdsuite.tracks.specs import ClassificationTask, InstructionTask


@dataclass
class RunData:
    """A task's tokenised data and how batches are formed and scored."""

    train_set: object
    eval_set: object
    train_labels: torch.Tensor  # per training example (empty on the instruction track)
    collator: object
    compute_metrics: object | None  # None: the Trainer reports the task loss only
    generation: GenerationSet | None = None  # prompts scored by sampling (instruction track)
    generation_settings: DictConfig | None = None
    digests: dict[str, str] | None = None  # sha256 per split of the rows used (`data_digests`)


def glue_data(cfg: DictConfig, task: ClassificationTask, tokenizer) -> RunData:
    train_split = glue.load_split(task, "train", cfg.dataset.data_dir)
    eval_split = glue.load_split(task, "validation", cfg.dataset.data_dir)
    train_rows = glue.subset_indices(len(train_split), cfg.dataset.max_train_samples)
    label_dtype = torch.float32 if task.is_regression else torch.long
    length = cfg.dataset.max_seq_length
    return RunData(
        train_set=glue.tokenize_split(train_split, tokenizer, length, cfg.dataset.max_train_samples),
        eval_set=glue.tokenize_split(eval_split, tokenizer, length, cfg.dataset.max_eval_samples),
        train_labels=torch.tensor([train_split.labels[i] for i in train_rows], dtype=label_dtype),
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda prediction: glue_metrics(task, prediction.predictions, prediction.label_ids),
    )


def instruction_data(cfg: DictConfig, task: InstructionTask, tokenizer, teacher_tokenizer=None) -> RunData:
    """Instruction data (Dolly-format, or ShareGPT first turns): response-token labels for training
    and validation loss, and the prompts of `dataset.generation.split` for ROUGE-L.

    `tokenizer` is the student's. A different `teacher_tokenizer` (loss=uld) gives training examples
    in both tokenizations (`instructions.tokenize_pairs`, aligned by offsets unless
    `loss.alignment=position`) and a collator that pads both; validation and generation are the
    student's alone."""
    settings = cfg.dataset
    splits = instruction_splits(settings, task)
    lengths = (settings.max_seq_length, settings.max_prompt_length)
    scored = splits[settings.generation.split][: settings.generation.max_examples]
    if teacher_tokenizer is not None and teacher_tokenizer is not tokenizer:
        align_offsets = cfg.loss.get("alignment", "offsets") == "offsets"
        train_set = instructions.tokenize_pairs(splits["train"], tokenizer, teacher_tokenizer, settings.template,
                                                *lengths, settings.max_train_samples, align_offsets)
        collator = PairCollator(tokenizer.pad_token_id, teacher_tokenizer.pad_token_id)
    else:
        train_set = instructions.tokenize_examples(splits["train"], tokenizer, settings.template, *lengths,
                                                   settings.max_train_samples)
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
    return RunData(
        train_set=train_set,
        eval_set=instructions.tokenize_examples(splits["validation"], tokenizer, settings.template, *lengths,
                                                settings.max_eval_samples),
        train_labels=torch.empty(0),
        collator=collator,
        compute_metrics=None,
        generation=GenerationSet(
            prompts=[instructions.prompt_ids(e, tokenizer, settings.template, settings.max_prompt_length)
                     for e in scored],
            references=[e.response for e in scored],
            instructions=[e.instruction for e in scored],
        ),
        generation_settings=settings.generation,
    )


_SPLITS_CACHE: dict[str, dict[str, list[instructions.Instruction]]] = {}


def instruction_splits(settings: DictConfig, task: InstructionTask) -> dict[str, list[instructions.Instruction]]:
    """The task's validation / test / train examples, read once per process for one dataset config
    and file state (a run reads them for its identity, then to train)."""
    source = settings.get("path")
    state = None
    if source:
        stat = Path(source).expanduser().stat()
        state = (stat.st_size, stat.st_mtime_ns)
    key = json.dumps([task.name, OmegaConf.to_container(settings, resolve=True), state], sort_keys=True, default=str)
    if key not in _SPLITS_CACHE:
        if task.reader == "sharegpt":
            splits = sharegpt.load_splits(settings)
        else:
            splits = instructions.load_splits(settings, task.hub_dataset)
        _SPLITS_CACHE.clear()
        _SPLITS_CACHE[key] = splits
    return _SPLITS_CACHE[key]


def _examples_digest(examples: list[instructions.Instruction]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.instruction, example.context, example.response]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def data_digests(cfg: DictConfig, task: ClassificationTask | InstructionTask) -> dict[str, str]:
    """sha256 of the rows a run uses, per part: parsed text and labels after subsetting, not the
    files' paths, so a moved copy gives the same digests and an edit in place gives others.

    GLUE: `train` and `validation` (each after `max_*_samples`). Instruction data: `train` and
    `validation` after subsetting, `validation_all` (the whole split, in the teacher's cache key for
    runs of any `max_eval_samples`; its scores follow `validation`: `Track.teacher_scoring`) and
    `generation` (the prompts and references scored by ROUGE-L). On the hub path the rows come
    from the hub's current revision, so a new revision gives new digests too.
    """
    return task.track.data_digests(cfg, task)


def glue_digests(cfg: DictConfig, task: ClassificationTask) -> dict[str, str]:
    settings = cfg.dataset
    train = glue.load_split(task, "train", settings.data_dir)
    validation = glue.load_split(task, "validation", settings.data_dir)
    return {"train": glue.rows_digest(train, settings.max_train_samples),
            "validation": glue.rows_digest(validation, settings.max_eval_samples)}


def instruction_digests(cfg: DictConfig, task: InstructionTask) -> dict[str, str]:
    settings = cfg.dataset
    splits = instruction_splits(settings, task)

    def first(examples, limit):
        return examples if limit is None else examples[:limit]

    scored = splits[settings.generation.split][: settings.generation.max_examples]
    return {
        "train": _examples_digest(first(splits["train"], settings.max_train_samples)),
        "validation": _examples_digest(first(splits["validation"], settings.max_eval_samples)),
        "validation_all": _examples_digest(splits["validation"]),
        "generation": _examples_digest(scored),
    }


def check_data(cfg: DictConfig, task) -> None:
    task.track.check_data(cfg, task)


def check_instruction_data(cfg: DictConfig, task: InstructionTask) -> None:
    if task.reader == "sharegpt":
        sharegpt.check_data_available(cfg.dataset)
    instructions.check_data_available(cfg.dataset)
    if cfg.dataset.generation.split not in ("validation", "test"):
        raise ValueError(
            f"dataset.generation.split={cfg.dataset.generation.split!r} is not one of ['validation', 'test']"
        )


def load_run_data(cfg: DictConfig, task: ClassificationTask | InstructionTask, tokenizer,
                  teacher_tokenizer=None) -> RunData:
    """The run's data in the student's tokenization (`tokenizer`), and in the teacher's too where
    that differs (instruction track, loss=uld)."""
    return task.track.load_data(cfg, task, tokenizer, teacher_tokenizer)


@dataclass
class PairCollator:
    """Pads batches that carry two tokenizations (`tokenize_pairs`), each column to its batch's
    longest row, on the right: ids with their tokenizer's pad id, masks with 0, labels with -100,
    aligned groups with -1. Other columns (`example_index`, `alignment_coverage`) become tensors
    as they are. Right padding keeps the models' default position ids correct."""

    pad_token_id: int
    teacher_pad_token_id: int

    def padding(self, column: str):
        if column.endswith("input_ids"):
            return self.teacher_pad_token_id if column.startswith("teacher_") else self.pad_token_id
        if column.endswith("attention_mask"):
            return 0
        if column.endswith("labels"):
            return IGNORE_INDEX
        if column.endswith("align_groups"):
            return -1
        return None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for column in features[0]:
            rows = [feature[column] for feature in features]
            pad = self.padding(column)
            if pad is None:
                batch[column] = torch.tensor(rows)
                continue
            width = max(len(row) for row in rows)
            batch[column] = torch.tensor([list(row) + [pad] * (width - len(row)) for row in rows], dtype=torch.long)
        return batch
