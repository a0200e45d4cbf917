"""Fine-tuned teachers, cached: each (teacher, dataset, teacher-training config) is fine-tuned once,
saved with its tokenizer under `cache_dir`, and reused by every later run and sweep trial. A file
lock makes concurrent runs that need the same teacher fine-tune it once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel

from kdsuite.tasks import get_task

CACHE_FORMAT = 1  # bump when what is cached, or how, changes
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


def cache_key(cfg: DictConfig) -> dict:
    """Everything that changes the fine-tuned teacher: the teacher config (with `finetune`) and
    the data it is trained and scored on."""
    dataset = cfg.dataset
    if get_task(dataset.name).is_causal_lm:
        described = OmegaConf.to_container(dataset, resolve=True)
        described.pop("generation", None)  # how students are scored does not change the teacher
        described.pop("max_eval_samples", None)
        if described.get("path"):
            described["path"] = str(Path(described["path"]).expanduser().resolve())
        return {"format": CACHE_FORMAT, "teacher": teacher_settings(cfg),
                "dataset": described}
    data_dir = dataset.data_dir
    return {
        "format": CACHE_FORMAT,
        "teacher": teacher_settings(cfg),
        "dataset": {
            "name": dataset.name,
            "source": str(Path(data_dir).expanduser().resolve()) if data_dir else "hub",
            "max_train_samples": dataset.max_train_samples,
            "max_eval_samples": dataset.max_eval_samples,
            "max_seq_length": dataset.max_seq_length,
        },
    }


@dataclass(frozen=True)
class CacheEntry:
    """Where one fine-tuned teacher lives, and the key it was made from (stored beside it)."""

    key: dict
    path: Path  # <cache_dir>/teachers/<teacher>-<task>-<hash of key>


def cache_entry(cfg: DictConfig) -> CacheEntry:
    """The entry of the run's teacher under `cfg.cache_dir` (resolved by the config: $KDSUITE_CACHE,
    else ~/.cache/kdsuite)."""
    key = cache_key(cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = Path(cfg.cache_dir).expanduser() / "teachers" / f"{cfg.teacher.name}-{cfg.dataset.name}-{digest[:16]}"
    return CacheEntry(key, path)


def load_cached(path: Path, model_class) -> FineTunedTeacher | None:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    model = model_class.from_pretrained(path)
    return FineTunedTeacher(model, path, meta["metrics"], meta.get("run_id"), from_cache=True)


def get_or_finetune(entry: CacheEntry, model_class, finetune) -> FineTunedTeacher:
    """The teacher cached at `entry`, or `finetune(output_dir) -> (model, tokenizer, metrics,
    run_id)` run once under a lock and saved atomically (a crash leaves no half-written cache)."""
    path = entry.path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        cached = load_cached(path, model_class)
        if cached is not None:
            return cached
        staging = path.with_name(path.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        model, tokenizer, metrics, run_id = finetune(staging / "trainer")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        meta = {"metrics": metrics, "run_id": run_id, "key": entry.key}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        staging.rename(path)
    return FineTunedTeacher(model, path, metrics, run_id, from_cache=False)
