"""Fine-tuned teachers, cached: each (teacher, dataset, teacher-training config) is fine-tuned once,
saved with its tokenizer under `cache_dir`, and reused by every later run and sweep trial. A file
lock makes concurrent runs that need the same teacher fine-tune it once.

The teacher's dev scores are kept beside it, per scoring setting: a track's scoring may depend on
settings that do not change the teacher (the instruction track's `dataset.generation` and
`max_eval_samples`: `Track.teacher_scoring`). A run whose scoring settings the entry has not seen
scores the cached teacher again (no training) and adds the scores, so the `teacher/<metric>` a run
logs is always measured under that run's own scoring.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from transformers import PreTrainedModel

from kdsuite import distributed
from kdsuite.data.run_data import data_digests
from kdsuite.identity import key_hash
from kdsuite.tracks import task_of
from kdsuite.trainer import resolve_bf16
from kdsuite.weights_files import weights_problems

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when what is cached, or how, changes
META_FILE = "kdsuite_teacher.json"


@dataclass
class FineTunedTeacher:
    model: PreTrainedModel
    path: Path
    metrics: dict[str, float]  # dev metrics under the run's scoring settings
    run_id: str | None  # the MLflow run that fine-tuned it
    from_cache: bool
    scores_run_id: str | None = None  # the MLflow run that measured `metrics` (the fine-tune's, or a later scoring)


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
    """Where one fine-tuned teacher lives, the key it was made from (stored beside it), and the
    run's scoring settings beyond the key (`Track.teacher_scoring`; empty where the key holds them all)."""

    key: dict
    path: Path  # <cache_dir>/teachers/<teacher>-<task>-<hash of key>
    scoring: dict = field(default_factory=dict)


def cache_entry(cfg: DictConfig, digests: dict[str, str] | None = None) -> CacheEntry:
    """The entry of the run's teacher under `cfg.cache_dir` (resolved by the config: $KDSUITE_CACHE,
    else ~/.cache/kdsuite). `digests`: the run's `data_digests`, computed here when not given."""
    task = task_of(cfg.dataset)
    digests = digests if digests is not None else data_digests(cfg, task)
    key = cache_key(cfg, digests)
    path = Path(cfg.cache_dir).expanduser() / "teachers" / f"{cfg.teacher.name}-{cfg.dataset.name}-{key_hash(key)}"
    scoring = task.track.teacher_scoring(cfg.dataset, digests)
    if cfg.teacher.get("finetune") is None:
        scoring["scored_with"] = scoring_arguments(cfg)
    return CacheEntry(key, path, scoring)


def scoring_arguments(cfg: DictConfig) -> dict:
    """How a teacher used as it comes (`teacher.finetune: null`) is scored, which its key leaves out:
    with the student's eval batch size (the Trainer's validation loss weighs each batch's token
    mean by its examples) and precision, on this device (sampling draws differ between devices)."""
    return {"per_device_eval_batch_size": cfg.trainer.per_device_eval_batch_size,
            "bf16": resolve_bf16(cfg.trainer.get("bf16", "auto")),
            "device": "cuda" if torch.cuda.is_available() and not cfg.trainer.get("use_cpu") else "cpu"}


def read_record(path: Path) -> dict:
    return json.loads((path / META_FILE).read_text())


def write_record(path: Path, meta: dict) -> None:
    """The entry's record, replaced whole, flushed to disk first (a crash leaves the old one or the new)."""
    staging = path / f"{META_FILE}.partial"
    with open(staging, "w") as handle:
        handle.write(json.dumps(meta, indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    staging.replace(path / META_FILE)


def recorded_scores(meta: dict, scoring: dict) -> dict | None:
    """`{"metrics", "run_id"}` measured under `scoring`, or None when the record holds none. With no
    scoring settings beyond the key, the fine-tune's own scores. An entry cached before scores were
    kept per setting has no `scores`: its scoring is unknown, so it is scored again once."""
    if not scoring:
        return {"metrics": meta["metrics"], "run_id": meta.get("run_id")}
    return next((scored for scored in meta.get("scores", []) if scored["scoring"] == scoring), None)


def needs_scores(entry: CacheEntry) -> bool:
    """Whether the cached teacher at `entry` has not been scored under the entry's scoring settings."""
    return recorded_scores(read_record(entry.path), entry.scoring) is None


def entry_problem(path: Path) -> str | None:
    """Why the cache entry at `path` cannot be used as it is (missing, its record unreadable, its
    weights cut short), or None. Reads the record and the weights' headers only."""
    if not path.exists():
        return "missing"
    try:
        read_record(path)["metrics"]
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
        meta = read_record(path)
        try:
            model = model_class.from_pretrained(path)
            return FineTunedTeacher(model, path, meta["metrics"], meta.get("run_id"), from_cache=True)
        except (OSError, ValueError, SafetensorError) as error:  # unreadable files; other errors (OOM) propagate
            problem = f"{type(error).__name__}: {str(error)[:300]}"
    if not repair:
        raise RuntimeError(f"cached teacher {path} cannot be used ({problem}) and this process may not rebuild it")
    move_aside(path, problem)
    return None


def get_or_finetune(entry: CacheEntry, model_class, finetune, score=None) -> FineTunedTeacher:
    """The teacher cached at `entry`, or `finetune(output_dir) -> (model, tokenizer, metrics,
    run_id)` run once under a lock and saved atomically (a crash leaves no half-written cache).

    A cached teacher not yet scored under `entry.scoring` is scored by `score(model) -> (metrics,
    run_id)` (`score_once`), and its scores are added to the entry's record; `score=None` (a
    process that must not score: one rank of a DDP run) raises instead.

    The model returned is always the one loaded from the cache, never the object a fine-tune or a
    scoring trained or evaluated: the Trainer changes that object in place (a loss attached as a
    submodule, under bf16 a forward wrapped in autocast), and the run that made the entry would
    otherwise distil from another teacher than every later run does."""
    path = entry.path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        cached = load_cached(path, model_class, repair=distributed.is_main_process())
        if cached is None:
            staging = path.with_name(path.name + ".partial")
            if staging.exists():  # left by a fine-tune that was killed; this process holds the lock
                log.warning("removing %s, left by an interrupted fine-tune of this teacher", staging)
                shutil.rmtree(staging)
            model, tokenizer, metrics, run_id = finetune(staging / "trainer")
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            shutil.rmtree(staging / "trainer", ignore_errors=True)
            meta = {"metrics": metrics, "run_id": run_id, "key": entry.key,
                    "scores": [{"scoring": entry.scoring, "metrics": metrics, "run_id": run_id}]}
            (staging / META_FILE).write_text(json.dumps(meta, indent=2))
            staging.rename(path)
            del model
            reloaded = load_cached(path, model_class, repair=False)
            return replace(reloaded, metrics=metrics, from_cache=False, scores_run_id=run_id)
        found = recorded_scores(read_record(path), entry.scoring)
    if found is None:  # scored outside the entry's lock: runs with recorded scores need not wait
        found = score_once(entry, cached, score)
        cached = load_cached(path, model_class, repair=False)  # not the object the scoring evaluated
    return replace(cached, metrics=found["metrics"], scores_run_id=found.get("run_id"))


def score_once(entry: CacheEntry, cached: FineTunedTeacher, score) -> dict:
    """The scores of `cached` under `entry.scoring`, measured by `score` once across processes (a
    lock per scoring setting; a process that finds them recorded after waiting reads them), and
    added to the entry's record under the entry's lock."""
    with FileLock(f"{entry.path}.scoring-{key_hash(entry.scoring)}.lock"):
        found = recorded_scores(read_record(entry.path), entry.scoring)
        if found is not None:
            return found
        if score is None or not distributed.is_main_process():
            raise RuntimeError(f"cached teacher {entry.path} has no scores under this run's scoring settings "
                               f"{entry.scoring} and this process may not score it")
        log.info("cached teacher %s: not scored under these settings yet; scoring it (no training)", entry.path)
        metrics, run_id = score(cached.model)
        found = {"scoring": entry.scoring, "metrics": metrics, "run_id": run_id}
        with FileLock(str(entry.path) + ".lock"):
            meta = read_record(entry.path)
            meta.setdefault("scores", []).append(found)
            write_record(entry.path, meta)
    return found
