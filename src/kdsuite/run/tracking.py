"""MLflow: every call the suite makes to it. The suite owns its runs (never the Trainer's
`report_to="mlflow"`, which opens a second run on `evaluate()`).

A run records the flattened resolved config as params, tags naming what was run, the resolved
config and Hydra overrides as artifacts, the Trainer's logs as metrics through
`MlflowMetricsCallback`, and at the end `final/<metric>` and `final_metric`. A run that raises
ends FAILED (KILLED on Ctrl-C). In a run on several processes only the main one records (the
others' calls do nothing), and student runs are tagged `world_size`.
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import optuna
from mlflow.entities import RunStatus
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from kdsuite.distributed import is_main_process, on_main_process, world_size

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


@on_main_process
def configure(tracking_cfg: DictConfig) -> None:
    """Point MLflow at `tracking.uri` (any URI MLflow accepts) and `tracking.experiment`."""
    mlflow.set_tracking_uri(tracking_cfg.uri)
    mlflow.set_experiment(tracking_cfg.experiment)


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists stay whole (`"[1, 2]"`)."""
    if not isinstance(tree, dict):
        return {prefix: str(tree)[:MAX_PARAM_LENGTH]}
    flat: dict[str, str] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_params(cfg: DictConfig) -> dict[str, str]:
    return flatten(OmegaConf.to_container(cfg, resolve=True))


def git_commit() -> str:
    """The commit of the code that ran (with `-dirty` when the tree had changes)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def hydra_overrides() -> list[str] | None:
    """The command-line overrides of the Hydra job in progress, if any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


@contextmanager
def tracked_run(
    run_name: str, tags: dict[str, str], cfg: DictConfig | None = None, parent_run_id: str | None = None
) -> Iterator:
    """Start an MLflow run that ends FAILED on error (KILLED on Ctrl-C or when pruned).

    It nests under `parent_run_id` when given, else under the active run if there is one. With
    `cfg`, log its flattened values as params and the resolved YAML (and the Hydra overrides) as
    artifacts under `config/`. On the other processes of a DDP run it yields None and records nothing.
    """
    if not is_main_process():
        yield None
        return
    nested = mlflow.active_run() is not None
    run = mlflow.start_run(
        run_name=run_name, nested=nested, parent_run_id=parent_run_id,
        tags={**tags, "git_commit": git_commit()},
    )
    try:
        if cfg is not None:
            mlflow.log_params(config_params(cfg))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
            overrides = hydra_overrides()
            if overrides is not None:
                mlflow.log_text(OmegaConf.to_yaml(overrides), "config/overrides.yaml")
        yield run
    except (KeyboardInterrupt, optuna.TrialPruned):
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run()


def metric_name(key: str) -> str:
    """Trainer log keys -> MLflow names: `eval_accuracy` -> `eval/accuracy`, `final_f1` ->
    `final/f1`, `loss` -> `train/loss`, and the end-of-training summary `train_runtime` ->
    `train_summary/runtime`; names that already hold a `/` are kept."""
    if "/" in key:
        return key
    for prefix, section in (("eval_", "eval"), ("final_", "final"), ("train_", "train_summary")):
        if key.startswith(prefix):
            return f"{section}/{key[len(prefix):]}"
    return f"train/{key}"


class MlflowMetricsCallback(TrainerCallback):
    """Send every numeric Trainer log to the active MLflow run, at the current global step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        metrics = {
            metric_name(key): float(value)
            for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)


def student_tags(cfg: DictConfig, loss_name: str, layer_pairs, teacher=None) -> dict[str, str]:
    """What a student run is: teacher, student, loss, dataset, seed, layer pairs, the teacher's
    cache folder and MLflow run, and the user's `tracking.tags`."""
    tags = {
        "role": "student",
        "teacher": cfg.teacher.name,
        "student": cfg.student.name,
        "loss": loss_name,
        "dataset": cfg.dataset.name,
        "seed": str(cfg.seed),
        "layer_pairs": str(layer_pairs),
        "world_size": str(world_size()),
    }
    if teacher is not None:
        tags.update(teacher_path=str(teacher.path), teacher_run_id=str(teacher.run_id))
    tags.update({key: str(value) for key, value in (cfg.tracking.get("tags") or {}).items()})
    return tags


def teacher_tags(cfg: DictConfig) -> dict[str, str]:
    return {"role": "teacher", "teacher": cfg.teacher.name, "dataset": cfg.dataset.name}


@on_main_process
def log_teacher_metrics(metrics: dict[str, float]) -> None:
    """The teacher's dev metrics beside the student's, as `teacher/<metric>`."""
    mlflow.log_metrics({f"teacher/{name}": value for name, value in metrics.items()})


@on_main_process
def log_model_size(parameters: int, trainable: int) -> None:
    mlflow.log_params({"student_parameters": parameters, "student_trainable_parameters": trainable})


@on_main_process
def log_generations(scores: dict[str, float], samples: list[dict]) -> None:
    """ROUGE-L of sampled responses as `final/<name>` and a sample of them as `generations.json`."""
    mlflow.log_metrics({f"final/{name}": value for name, value in scores.items()})
    mlflow.log_dict(samples, "generations.json")


def log_final(main_metric: str, metrics: dict[str, float]) -> float:
    """`final_metric` (the task's main metric, a sweep's objective) and the tag naming it."""
    objective = metrics[main_metric]
    if is_main_process():
        mlflow.log_metric("final_metric", objective)
        mlflow.set_tag("main_metric", main_metric)
    return objective


@on_main_process
def log_cache_key(key: dict) -> None:
    """A fine-tuned teacher's cache key, flattened, as the params of its `role=teacher` run."""
    mlflow.log_params(flatten(key))
