"""GLUE data: read a split (local TSV in GLUE's layout, or the `nyu-mll/glue` hub dataset) and
tokenise it for a model.

Every example becomes `{text_a, text_b, label}`; tokenised datasets add `input_ids`,
`attention_mask` (and `token_type_ids` where the tokenizer has them), `labels` and
`example_index` (the row's position in the split, which contrastive losses use to address a
memory bank). Nothing is padded here: `DataCollatorWithPadding` pads per batch.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets

from kdsuite.tracks.specs import ClassificationTask

HUB_DATASET = "nyu-mll/glue"
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}


@dataclass
class GlueSplit:
    """One split of one task, untokenised."""

    text_a: list[str]
    text_b: list[str] | None
    labels: list[float] | list[int]

    def __len__(self) -> int:
        return len(self.labels)


def task_dir(task: ClassificationTask, data_dir: str | Path) -> Path:
    """The task's folder inside a GLUE download, failing clearly when it is not there."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset.data_dir {str(root)!r} is not a directory: point it (or the GLUE_DIR "
            f"environment variable) at a GLUE download holding {task.glue_dir}/train.tsv and "
            f"{task.glue_dir}/dev.tsv, or unset both to read {HUB_DATASET} from the hub"
        )
    return root / task.glue_dir


def split_path(task: ClassificationTask, data_dir: str | Path, split: str) -> Path:
    """Path of `split` ("train" or "validation") of `task`, which must exist."""
    path = task_dir(task, data_dir) / SPLIT_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"{task.name}: missing {split} file {str(path)!r} (GLUE layout expects "
            f"{task.glue_dir}/{SPLIT_FILES[split]} under dataset.data_dir)"
        )
    return path


def _parse_label(task: ClassificationTask, raw: str, path: Path, line_number: int) -> int | float:
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{path}:{line_number}: label {raw!r} is not a number") from None
    if task.label_names:
        if raw not in task.label_names:
            raise ValueError(
                f"{path}:{line_number}: label {raw!r} is not one of {list(task.label_names)}"
            )
        return task.label_names.index(raw)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{path}:{line_number}: label {raw!r} is not an integer") from None


def read_glue_tsv(task: ClassificationTask, path: Path) -> GlueSplit:
    """Read a GLUE TSV exactly as distributed.

    Quoting is off (fields hold unbalanced `"`), the UTF-8 BOM of MRPC's header is dropped by
    the `utf-8-sig` codec, CoLA has no header, and a missing final newline (CoLA dev) is fine.
    A row with too few columns (a truncated line, a missing field), a label that does not parse
    and a split without rows are refused with the file and line named. The parse is kept per
    (file, size, modification time): a run reads its data once for its identity and once to train.
    """
    stat = path.stat()
    return _read_glue_tsv(task, str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_glue_tsv(task: ClassificationTask, path_name: str, size: int, mtime_ns: int) -> GlueSplit:
    csv.field_size_limit(sys.maxsize)
    path = Path(path_name)
    text_a: list[str] = []
    text_b: list[str] = []
    labels: list = []
    columns = [task.text_a_column, task.label_column]
    if task.text_b_column is not None:
        columns.append(task.text_b_column)
    needed = max(columns) + 1
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if task.has_header:
            next(rows, None)
        for line_number, row in enumerate(rows, start=2 if task.has_header else 1):
            if not row:
                continue
            if len(row) < needed:
                raise ValueError(
                    f"{path}:{line_number}: {len(row)} tab-separated column(s), {task.name} needs at least "
                    f"{needed} (text in column(s) {sorted(set(columns) - {task.label_column})}, label in "
                    f"column {task.label_column}, counting from 0): a truncated line or a missing field"
                )
            text_a.append(row[task.text_a_column].strip())
            if task.text_b_column is not None:
                text_b.append(row[task.text_b_column].strip())
            labels.append(_parse_label(task, row[task.label_column], path, line_number))
    if not labels:
        raise ValueError(f"{path}: no data rows{' after the header' if task.has_header else ''}: "
                         f"the {task.name} split is empty")
    return GlueSplit(text_a, text_b if task.text_b_column is not None else None, labels)


def read_hub_split(task: ClassificationTask, split: str) -> GlueSplit:
    """Read a split from the `nyu-mll/glue` hub dataset (needs network access to the hub)."""
    hub = datasets.load_dataset(HUB_DATASET, task.hub_config, split=split)
    fields = task.hub_text_fields
    return GlueSplit(
        text_a=list(hub[fields[0]]),
        text_b=list(hub[fields[1]]) if len(fields) > 1 else None,
        labels=list(hub["label"]),
    )


def load_split(task: ClassificationTask, split: str, data_dir: str | Path | None) -> GlueSplit:
    """A split from `data_dir` (GLUE layout) when given, else from the hub."""
    if data_dir is None:
        return read_hub_split(task, split)
    return read_glue_tsv(task, split_path(task, data_dir, split))


def check_data_available(task: ClassificationTask, data_dir: str | Path | None) -> None:
    """Fail before any long work when a local split is missing (the hub is checked on load)."""
    if data_dir is not None:
        for split in SPLIT_FILES:
            split_path(task, data_dir, split)


SUBSET_SEED = 0  # the same train subset for every run, whatever the run's seed


def subset_indices(total: int, max_samples: int | None) -> list[int]:
    """Rows kept under `max_samples`: all of them, or a seeded random subset in file order.

    A random subset (not the first rows) keeps the label mix of files that are sorted; the fixed
    seed keeps it identical across runs and methods so they are compared on the same data.
    """
    if max_samples is None or max_samples >= total:
        return list(range(total))
    if max_samples <= 0:
        raise ValueError(f"dataset.max_*_samples={max_samples}: must be a positive integer or null")
    generator = random.Random(SUBSET_SEED)
    return sorted(generator.sample(range(total), max_samples))


def tokenize_split(
    split: GlueSplit, tokenizer, max_seq_length: int, max_samples: int | None = None
) -> datasets.Dataset:
    """Tokenise (truncating to `max_seq_length`, no padding) a split or a subset of it.

    `example_index` numbers the kept rows 0..n-1, so it can address a per-example memory bank.
    """
    rows = subset_indices(len(split), max_samples)
    encoded = tokenizer(
        [split.text_a[i] for i in rows],
        [split.text_b[i] for i in rows] if split.text_b is not None else None,
        truncation=True,
        max_length=max_seq_length,
    )
    columns = dict(encoded)
    columns["labels"] = [split.labels[i] for i in rows]
    columns["example_index"] = list(range(len(rows)))
    return datasets.Dataset.from_dict(columns)


def rows_digest(split: GlueSplit, max_samples: int | None) -> str:
    """sha256 of the rows a run uses from `split` (texts and labels after subsetting): what its
    teacher and its result depend on, wherever the files sit."""
    rows = subset_indices(len(split), max_samples)
    digest = hashlib.sha256()
    for i in rows:
        pair = [split.text_a[i], split.text_b[i] if split.text_b is not None else None, split.labels[i]]
        digest.update(json.dumps(pair).encode())
        digest.update(b"\n")
    return digest.hexdigest()
