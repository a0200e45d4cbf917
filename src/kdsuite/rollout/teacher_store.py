"""SeqKD's training text: the teacher's sampled response to every training prompt, generated once per
(teacher, tokenised prompts, generation settings, precision) and reused by every run, seed and trial.

The store lives beside the fine-tuned teacher (`<teacher cache>/generations/<hash of key>`), is
built under a file lock in a `.partial` folder renamed into place when complete (the pattern of
`teacher/cache.py` and `teacher/outputs.py`), and holds `responses.json` (one list of token
ids per training example, in example order) and `manifest.json` (the key, the build time and the
number of generated tokens). A store whose manifest is missing or made for another key is rebuilt.

Choices: the teacher samples at `rollout.temperature` / `rollout.top_p`, top-k off, as DistiLLM's
`generate_data_seqkd.sh` does (Kim and Rush decode with beam search); its sampling seed is
`rollout.generation_seed`, not the run's seed, so that every seed trains on one set of responses;
the prompt is kept exactly as the data tokenised it and the response follows it (no cut at
`dataset.max_seq_length`: prompt <= max_prompt_length plus at most `max_new_tokens`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import datasets
import torch
from filelock import FileLock

from kdsuite.rollout.sampling import SamplingSettings, batch_prompts, sample_responses
from kdsuite.rollout.settings import RolloutSettings
from kdsuite.tracks.base import IGNORE_INDEX

STORE_FORMAT = 1
MANIFEST = "manifest.json"
RESPONSES = "responses.json"

log = logging.getLogger(__name__)


def train_prompts(train_set) -> list[torch.Tensor]:
    """Every training example's prompt ids, in example order."""
    columns = {name: [torch.tensor(row) for row in train_set[name]]
               for name in ("input_ids", "attention_mask", "labels")}
    return [batch_prompts({name: [rows[i]] for name, rows in columns.items()})[0] for i in range(len(train_set))]


def store_key(teacher_key: dict, prompts: list[torch.Tensor], settings: RolloutSettings, dtype: torch.dtype) -> dict:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps(prompt.tolist()).encode())
    key = {"format": STORE_FORMAT, "teacher": teacher_key, "prompts_sha256": digest.hexdigest(), "rows": len(prompts),
           "temperature": settings.temperature, "top_p": settings.top_p, "max_new_tokens": settings.max_new_tokens,
           "generation_seed": settings.generation_seed, "precision": str(dtype)}
    return json.loads(json.dumps(key))


def generate_all(teacher, prompts: list[torch.Tensor], settings: RolloutSettings, tokenizer, batch_size: int,
                 device) -> list[list[int]]:
    """The teacher's sampled response to each prompt, in batches of `batch_size`."""
    teacher.to(device)
    torch.manual_seed(settings.generation_seed)
    sampling = SamplingSettings(settings.temperature, settings.top_p, settings.max_new_tokens)
    responses = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        responses += [r.tolist() for r in sample_responses(teacher, batch, sampling, tokenizer.pad_token_id,
                                                           tokenizer.eos_token_id)]
    return responses


def stored_responses(path: Path, key: dict) -> list[list[int]] | None:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return None
    if json.loads(manifest_path.read_text()).get("key") != key:
        log.warning("teacher generations %s were made for another key: generated again", path)
        return None
    return json.loads((path / RESPONSES).read_text())


def get_or_generate(store_dir: Path, key: dict, generate) -> tuple[list[list[int]], bool]:
    """(responses, generated_now): read from `store_dir`, or `generate()` once under its lock."""
    store_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(store_dir) + ".lock"):
        responses = stored_responses(store_dir, key)
        if responses is not None:
            return responses, False
        shutil.rmtree(store_dir, ignore_errors=True)
        staging = store_dir.with_name(store_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        started = time.perf_counter()
        responses = generate()
        seconds = time.perf_counter() - started
        (staging / RESPONSES).write_text(json.dumps(responses))
        manifest = {"key": key, "build_seconds": round(seconds, 2),
                    "generated_tokens": sum(len(response) for response in responses)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        staging.rename(store_dir)
        log.info("teacher generations %s: %d responses in %.1f s", store_dir, len(responses), seconds)
        return responses, True


def with_responses(train_set, prompts: list[torch.Tensor], responses: list[list[int]]) -> datasets.Dataset:
    """The training set with each example's response replaced; `example_index` kept."""
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [],
                                "example_index": list(train_set["example_index"])}
    for prompt, response in zip(prompts, responses):
        ids = prompt.tolist() + response
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append([IGNORE_INDEX] * len(prompt) + response)
    return datasets.Dataset.from_dict(columns)


def teacher_train_set(run, teacher, settings: RolloutSettings):
    """The run's training set with the teacher's responses (generated now, or read back)."""
    prompts = train_prompts(run.data.train_set)
    dtype = next(teacher.model.parameters()).dtype
    key = store_key(run.teacher_entry.key, prompts, settings, dtype)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    store_dir = Path(teacher.path) / "generations" / digest[:16]
    responses, _ = get_or_generate(store_dir, key, lambda: generate_all(
        teacher.model, prompts, settings, run.tokenizer, run.student_args.per_device_eval_batch_size,
        run.student_args.device))
    return with_responses(run.data.train_set, prompts, responses)
