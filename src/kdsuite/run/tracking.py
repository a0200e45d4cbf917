"""MLflow: every call the suite makes to it. The suite owns its runs (never the Trainer's
`report_to="mlflow"`, which opens a second run on `evaluate()`).

A run records the flattened resolved config as params, tags naming what was run, the resolved
config and Hydra overrides as artifacts, the Trainer's logs as metrics through
`MlflowMetricsCallback`, and at the end `final/<metric>` and `final_metric`. A run that raises
ends FAILED (KILLED on Ctrl-C). In a run on several processes only the main one records (the
others' calls do nothing), and student runs are tagged `world_size`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import optuna
import torch
import transformers
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from kdsuite import tracking_names as names
from kdsuite.distributed import is_main_process, on_main_process, world_size
from kdsuite.signals import RunKilled
from kdsuite.stores.lock import sqlite_lock

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
ERROR_TAG_LENGTH = 500


# The experiment tag MLflow's UI reads to open an experiment on its runs ("model training"), not on
# the GenAI overview of traces.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


@on_main_process
def configure(tracking_cfg: DictConfig) -> None:
    """Point MLflow at `tracking.uri` (any URI MLflow accepts) and `tracking.experiment`, tagged so
    that MLflow's UI opens it on its runs.

    A SQLite store is created (or migrated) on first use; several processes doing that at once
    race in alembic's migration, so for SQLite the first connection happens under a file lock
    beside the database.
    """
    mlflow.set_tracking_uri(tracking_cfg.uri)
    with sqlite_lock(tracking_cfg.uri):
        experiment = mlflow.set_experiment(tracking_cfg.experiment)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists stay whole (`"[1, 2]"`)."""
    if not isinstance(tree, dict):
        return {prefix: str(tree)[:MAX_PARAM_LENGTH]}
    flat: dict[str, str] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# Keys that tell Hydra how to build an object, not how the run is set up: left out of the params
# (`_target_` stays: it names the class that ran).
HYDRA_PLUMBING = ("_partial_",)


def config_params(cfg: DictConfig) -> dict[str, str]:
    """The run's config as params, without `resume` (a continued run keeps the params it has) and
    without Hydra's plumbing (`loss._partial_`)."""
    described = OmegaConf.to_container(cfg, resolve=True)
    described.pop("resume", None)
    return flatten(without_plumbing(described))


def without_plumbing(tree):
    """`tree` without the HYDRA_PLUMBING keys, at any depth."""
    if not isinstance(tree, dict):
        return tree
    return {key: without_plumbing(value) for key, value in tree.items() if key not in HYDRA_PLUMBING}


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


def environment() -> str:
    """What computed the run, as far as its numbers depend on it: the torch and transformers
    versions and the device (GPU name, else the CPU's model and torch's thread count). Two runs
    of one config on different environments may differ in the last bits, and so in a metric."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"{cpu_model()}, {torch.get_num_threads()} thread(s)"
    return f"torch {torch.__version__}, transformers {transformers.__version__}, {device}"


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`; the platform's processor string elsewhere)."""
    return next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
                platform.processor() or "cpu")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def hydra_overrides() -> list[str] | None:
    """The command-line overrides of the Hydra job in progress, if any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def describe_error(error: BaseException) -> str:
    """`Type: message`, at most ERROR_TAG_LENGTH characters: the `error` tag of a failed run."""
    if isinstance(error, RunKilled):
        return f"killed by {error.signal_name}"
    return f"{type(error).__name__}: {error}"[:ERROR_TAG_LENGTH]


def end_run_with_error(error: BaseException, status: str) -> None:
    """End the active run with `status`, its `error` tag and a `traceback.txt` artifact."""
    try:
        mlflow.set_tag(names.ERROR, describe_error(error))
        mlflow.log_text("".join(traceback.format_exception(error)), "traceback.txt")
    finally:
        mlflow.end_run(status)


@contextmanager
def tracked_run(
    run_name: str,
    tags: dict[str, str],
    cfg: DictConfig | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
) -> Iterator:
    """Start an MLflow run, or continue `resume_run_id`, that ends with an honest status.

    FAILED on an exception and KILLED on SIGTERM/SIGINT, both with the tag `error` (exception type
    and message, or the signal) and the artifact `traceback.txt`; a pruned sweep trial ends KILLED
    with the tag `pruned=true`. It nests under `parent_run_id` when given, else under the active
    run if there is one. With `cfg`, a new run logs the config's flattened values as params and the
    resolved YAML (and the Hydra overrides) as artifacts under `config/`; a continued run already
    has them; `tracking.system_metrics=true` samples CPU, memory, disk and network (and GPU
    utilisation and memory, with nvidia-ml-py installed) as `system/*` metrics every 10 s while the
    run is open. On the other processes of a DDP run it yields None and records nothing.
    """
    if not is_main_process():
        yield None
        return
    nested = mlflow.active_run() is not None
    system_metrics = bool(cfg.tracking.get("system_metrics", False)) if cfg is not None else False
    run = mlflow.start_run(
        run_id=resume_run_id, run_name=run_name, nested=nested, parent_run_id=parent_run_id,
        tags={**tags, "git_commit": git_commit(), "environment": environment()}, log_system_metrics=system_metrics,
    )
    try:
        if resume_run_id is not None:
            if names.ERROR in run.data.tags:  # the interruption it continues from is over
                mlflow.MlflowClient().delete_tag(resume_run_id, names.ERROR)
        elif cfg is not None:
            mlflow.log_params(config_params(cfg))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
            overrides = hydra_overrides()
            if overrides is not None:
                mlflow.log_text(OmegaConf.to_yaml(overrides), "config/overrides.yaml")
        yield run
    except optuna.TrialPruned:
        mlflow.set_tag("pruned", "true")
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except KeyboardInterrupt as error:
        end_run_with_error(error, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        end_run_with_error(error, RunStatus.to_string(RunStatus.FAILED))
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
    cache folder, the MLflow run that made it and the one that measured its `teacher/*` scores
    (the same run, unless the cached teacher was scored again under this run's settings), and the
    user's `tracking.tags`."""
    tags = {
        names.ROLE: names.STUDENT,
        names.TEACHER_NAME: cfg.teacher.name,
        names.STUDENT_NAME: cfg.student.name,
        names.LOSS: loss_name,
        names.DATASET: cfg.dataset.name,
        names.SEED: str(cfg.seed),
        "layer_pairs": str(layer_pairs),
        "world_size": str(world_size()),
    }
    if teacher is not None:
        tags.update(teacher_path=str(teacher.path), teacher_run_id=str(teacher.run_id))
        tags[names.TEACHER_SCORES_RUN_ID] = str(teacher.scores_run_id)
    tags.update({key: str(value) for key, value in (cfg.tracking.get("tags") or {}).items()})
    return tags


def teacher_tags(cfg: DictConfig) -> dict[str, str]:
    return {names.ROLE: names.TEACHER, names.TEACHER_NAME: cfg.teacher.name, names.DATASET: cfg.dataset.name}


@on_main_process
def log_teacher_metrics(metrics: dict[str, float]) -> None:
    """The teacher's dev metrics beside the student's, as `teacher/<metric>`."""
    mlflow.log_metrics({names.teacher_metric(name): value for name, value in metrics.items()})


@on_main_process
def log_model_size(parameters: int, trainable: int) -> None:
    mlflow.log_params({"student_parameters": parameters, "student_trainable_parameters": trainable})


@on_main_process
def log_generations(scores: dict[str, float], samples: list[dict]) -> None:
    """ROUGE-L of sampled responses as `final/<name>` and a sample of them as `generations.json`."""
    mlflow.log_metrics({names.final(name): value for name, value in scores.items()})
    mlflow.log_dict(samples, "generations.json")


def log_final(main_metric: str, metrics: dict[str, float]) -> float:
    """`final_metric` (the task's main metric, a sweep's objective) and the tag naming it."""
    objective = metrics[main_metric]
    if is_main_process():
        mlflow.log_metric(names.FINAL_METRIC, objective)
        mlflow.set_tag(names.MAIN_METRIC, main_metric)
    return objective


def finished_objective(uri: str, run_id: str, experiment: str) -> float | None:
    """`final_metric` of the run `run_id` in the store `uri` if it FINISHED with one in the
    experiment named `experiment` and was not deleted; else None (also when the store no longer
    holds the run)."""
    client = mlflow.MlflowClient(uri)
    try:
        found = client.get_run(run_id)
        in_experiment = client.get_experiment(found.info.experiment_id).name == experiment
    except MlflowException:
        return None
    if (found.info.status != RunStatus.to_string(RunStatus.FINISHED) or found.info.lifecycle_stage != "active"
            or not in_experiment):
        return None
    return found.data.metrics.get(names.FINAL_METRIC)


@on_main_process
def log_cache_key(key: dict) -> None:
    """A fine-tuned teacher's cache key, flattened, as the params of its `role=teacher` run."""
    mlflow.log_params(flatten(key))


def summary_line(run_name: str, metric_names, metrics: dict[str, float], teacher_metrics, run_id: str) -> str:
    """One line saying what a run did: its task metrics, the teacher's, and where the run is."""
    scores = ", ".join(f"{name} {metrics[name]:.4f}" for name in metric_names if name in metrics)
    line = f"{run_name}: dev {scores}"
    if teacher_metrics:
        teacher_scores = ", ".join(f"{name} {teacher_metrics[name]:.4f}" for name in metric_names
                                   if name in teacher_metrics)
        line += f" (teacher {teacher_scores})"
    return f"{line}; MLflow run {run_id} at {mlflow.get_tracking_uri()}"


class ResumedFromStep(TrainerCallback):
    """Tag `resumed_from_step` once the Trainer has loaded the checkpoint: at the first step it
    takes after loading weights, optimizer, scheduler, trainer state and RNG states (or at the end
    of training when no step was left), not when the resume is planned."""

    def __init__(self, step: int):
        self.step = step
        self.tagged = False

    def _tag(self, state) -> None:
        if not self.tagged and state.is_world_process_zero and mlflow.active_run() is not None:
            mlflow.set_tag(names.RESUMED_FROM_STEP, str(self.step))
        self.tagged = True

    def on_step_begin(self, args, state, control, **kwargs):
        self._tag(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._tag(state)


def record_refused_trial(cfg: DictConfig, error: BaseException) -> None:
    """A sweep trial (`tracking.parent_run_id` set) refused before its run started: leave a FAILED
    child run under the sweep's parent with the trial's tags and the `error`, so the failure is seen
    in MLflow. Outside a sweep it does nothing (the error reaches the user directly)."""
    parent_run_id = cfg.tracking.get("parent_run_id")
    if not parent_run_id or not is_main_process():
        return
    try:
        client = mlflow.MlflowClient(cfg.tracking.uri)
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        tags = {names.ROLE: names.STUDENT, names.TEACHER_NAME: str(cfg.teacher.get("name")),
                names.STUDENT_NAME: str(cfg.student.get("name")), names.DATASET: str(cfg.dataset.get("name")),
                names.SEED: str(cfg.get("seed")), "mlflow.parentRunId": parent_run_id,
                names.ERROR: describe_error(error)}
        tags.update({key: str(value) for key, value in (cfg.tracking.get("tags") or {}).items()})
        run = client.create_run(experiment_id, run_name="refused-trial", tags=tags)
        client.log_text(run.info.run_id, "".join(traceback.format_exception(error)), "traceback.txt")
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
    except Exception as record_error:  # the trial's own error is the one to raise
        log.warning("could not record the refused trial in MLflow: %s", record_error)


class RunRecord(TrainerCallback):
    """What MLflow shows of a student run beyond its metrics: its data as dataset inputs, and
    with `save_student=true` the trained student as an MLflow model.

    - Inputs (`on_train_begin`, again on a resumed run, which MLflow keeps once): the train and dev
      sets as datasets named after the task (`rte`), context `train` and `eval`, with a digest of
      the rows used (the first 16 hex digits of `RunData.digests`' sha256 of the parsed rows after
      subsetting; MLflow keeps at most 36 characters) and the number of rows after subsetting as
      the dataset's profile (`{"num_rows": N}`). The source is the file read (GLUE TSV, JSONL) or
      the hub dataset, so the Dataset column of MLflow's runs table says what a run trained on.
    - The model (`on_evaluate` of the final scoring, `metric_key_prefix="final"`): logged with
      `mlflow.transformers` as `student` (the model and tokenizer saved by `save_pretrained`, task
      `text-classification` or `text-generation`), before `final_metric` is logged, so MLflow links
      that metric to the model (the logged model holds `final_metric` among its metrics).
      `mlflow.transformers` rather than `mlflow.pytorch`: pytorch's default format (`pt2`) needs
      `torch.export` of an example batch and its other, `pickle`, ties loading to these classes;
      the transformers flavour stores the Hugging Face folder and loads back as a pipeline. Its
      requirements are given (torch, transformers at their versions), since inferring them imports
      packages the suite does not install (torchvision) and fails. It needs no network (a warning
      says the model card could not be fetched). A failure to log the model is a warning and the
      tag `student_model_error`, not a failed run: the student is still saved to the run's folder.
    """

    def __init__(self, run):
        self.run = run  # kdsuite.run.assembly.Run

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and mlflow.active_run() is not None:
            log_data_inputs(self.run)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        final = any(key.startswith("final_") for key in (metrics or {}))
        if (final and self.run.cfg.get("save_student") and state.is_world_process_zero
                and mlflow.active_run() is not None):
            log_student_model(self.run, model)


DATA_CONTEXTS = {"train": "train", "validation": "eval"}
DIGEST_LENGTH = 16


def log_data_inputs(run) -> None:
    """The run's train and dev sets as MLflow dataset inputs (see `RunRecord`)."""
    from mlflow.data.meta_dataset import MetaDataset

    class RowsDataset(MetaDataset):
        """A dataset known by name, source and digest, with its row count as the profile."""

        def __init__(self, source, name, digest, num_rows):
            self.num_rows = num_rows
            super().__init__(source=source, name=name, digest=digest)

        @property
        def profile(self):
            return {"num_rows": self.num_rows}

        def to_dict(self):
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    digests = getattr(run.data, "digests", None) or {}
    for part, rows in (("train", run.data.train_set), ("validation", run.data.eval_set)):
        digest = digests.get(part) or rows_digest(rows)
        dataset = RowsDataset(data_source(run.cfg, run.task, part), run.cfg.dataset.name, digest[:DIGEST_LENGTH],
                              len(rows))
        mlflow.log_input(dataset, context=DATA_CONTEXTS[part])


def rows_digest(rows) -> str:
    """sha256 of tokenised rows' token ids, for data that comes without `RunData.digests`."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(list(row["input_ids"])).encode())
    return digest.hexdigest()


def data_source(cfg: DictConfig, task, part: str):
    """Where a split was read from: the GLUE TSV or JSONL file, else the hub dataset."""
    return task.track.data_source(cfg.dataset, task, part)


def log_student_model(run, model) -> None:
    """The trained student as the MLflow model `student` of the active run (see `RunRecord`)."""
    task = run.task.track.pipeline_task
    requirements = [f"torch=={torch.__version__}", f"transformers=={transformers.__version__}"]
    try:
        mlflow.transformers.log_model({"model": model, "tokenizer": run.tokenizer}, name="student", task=task,
                                      pip_requirements=requirements)
    except Exception as error:  # the run trained; its student is still saved to disk
        log.warning("could not log the student as an MLflow model: %s", error)
        mlflow.set_tag("student_model_error", describe_error(error))
