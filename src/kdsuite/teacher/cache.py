"""Fine-tuned teachers, cached: each (teacher, dataset, teacher-training config) is fine-tuned once,
saved with its tokenizer under `cache_dir`, and reused by every later run and sweep trial. A file
lock makes concurrent runs that need the same teacher fine-tune it once.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from transformers import PreTrainedModel

from kdsuite import distributed
from kdsuite.data.run_data import data_digests
from kdsuite.identity import key_hash
from kdsuite.tracks import task_of
from kdsuite.weights_files import weights_problems

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when what is cached, or how, changes
META_FILE = "kdsuite_teacher.json"


@dataclass
class FineTunedTeacher:
    model: PreTrainedModel
    path: Path
    metrics: dict[str, float]  # dev metrics measured right after fine-tuning
    run_id: str | None  # the MLflow run that fine-tuned it
    from_cache: bool


OUTPUT_SETTINGS = ("outputs", "cache_top_k")  # how students read the teacher, not the teacher itself


def teacher_settings(cfg: DictConfig) -> dict:
    """The teacher config without the settings of its output cache: switching a run to cached
    outputs must find the same fine-tuned teacher."""
    settings = OmegaConf.to_container(cfg.teacher, resolve=True)
    for name in OUTPUT_SETTINGS:
        settings.pop(name, None)
    return settings


def cache_key(cfg: DictConfig, digests: dict[str, str] | None = None) -> dict:
    """Everything that changes the fine-tuned teacher: the teacher config (with `finetune`), the
    dataset settings it is trained and scored with, and the digest of the rows themselves
    (`data_digests`), not the folder they sit in: moving or copying the data reuses the teacher,
    editing it in place fine-tunes a new one."""
    dataset = cfg.dataset
    task = task_of(dataset)
    digests = digests if digests is not None else data_digests(cfg, task)
    return {"format": CACHE_FORMAT, "teacher": teacher_settings(cfg),
            "dataset": task.track.teacher_cache_dataset(dataset, digests)}


@dataclass(frozen=True)
class CacheEntry:
    """Where one fine-tuned teacher lives, and the key it was made from (stored beside it)."""

    key: dict
    path: Path  # <cache_dir>/teachers/<teacher>-<task>-<hash of key>


def cache_entry(cfg: DictConfig, digests: dict[str, str] | None = None) -> CacheEntry:
    """The entry of the run's teacher under `cfg.cache_dir` (resolved by the config: $KDSUITE_CACHE,
    else ~/.cache/kdsuite). `digests`: the run's `data_digests`, computed here when not given."""
    key = cache_key(cfg, digests)
    path = Path(cfg.cache_dir).expanduser() / "teachers" / f"{cfg.teacher.name}-{cfg.dataset.name}-{key_hash(key)}"
    return CacheEntry(key, path)


def entry_problem(path: Path) -> str | None:
    """Why the cache entry at `path` cannot be used as it is (missing, its record unreadable, its
    weights cut short), or None. Reads the record and the weights' headers only."""
    if not path.exists():
        return "missing"
    try:
        meta = json.loads((path / META_FILE).read_text())
        meta["metrics"]
    except (OSError, ValueError, KeyError) as error:
        return f"{META_FILE} unreadable ({type(error).__name__})"
    problems = weights_problems(path)
    return "; ".join(problems) if problems else None


def move_aside(path: Path, why: str) -> Path:
    """Rename a damaged entry to `<entry>.damaged-<time>` (kept for a look, never deleted: it may
    have cost hours), with a warning naming it."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    log.warning("cached teacher %s cannot be used (%s): moved to %s; fine-tuning it again", path, why, aside)
    return aside


def load_cached(path: Path, model_class, repair: bool = True) -> FineTunedTeacher | None:
    """The teacher cached at `path`, or None when there is none or it is damaged (a truncated
    weights file, a missing or unreadable record): the caller, holding the lock, then rebuilds it,
    and the damaged entry is moved aside with a warning naming it. `repair=False` (a process that
    must not change the cache: a DDP rank other than the main one) raises instead."""
    problem = entry_problem(path)
    if problem == "missing":
        return None
    if problem is None:
        meta = json.loads((path / META_FILE).read_text())
        try:
            model = model_class.from_pretrained(path)
            return FineTunedTeacher(model, path, meta["metrics"], meta.get("run_id"), from_cache=True)
        except (OSError, ValueError, SafetensorError) as error:  # unreadable files; other errors (OOM) propagate
            problem = f"{type(error).__name__}: {str(error)[:300]}"
    if not repair:
        raise RuntimeError(f"cached teacher {path} cannot be used ({problem}) and this process may not rebuild it")
    move_aside(path, problem)
    return None


def get_or_finetune(entry: CacheEntry, model_class, finetune) -> FineTunedTeacher:
    """The teacher cached at `entry`, or `finetune(output_dir) -> (model, tokenizer, metrics,
    run_id)` run once under a lock and saved atomically (a crash leaves no half-written cache)."""
    path = entry.path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        cached = load_cached(path, model_class, repair=distributed.is_main_process())
        if cached is not None:
            return cached
        staging = path.with_name(path.name + ".partial")
        if staging.exists():  # left by a fine-tune that was killed; this process holds the lock
            log.warning("removing %s, left by an interrupted fine-tune of this teacher", staging)
            shutil.rmtree(staging)
        model, tokenizer, metrics, run_id = finetune(staging / "trainer")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        meta = {"metrics": metrics, "run_id": run_id, "key": entry.key}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        staging.rename(path)
    return FineTunedTeacher(model, path, metrics, run_id, from_cache=False)
