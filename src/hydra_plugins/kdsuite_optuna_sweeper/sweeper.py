"""The `kdsuite_optuna` Hydra sweeper.

Hydra keeps what it does well (composing each trial's config from overrides, output folders, the
launcher that runs jobs); Optuna does the searching through ask/tell, so any current Optuna
release works (the published `hydra-optuna-sweeper` pins optuna<3, whose SQL storage breaks
under SQLAlchemy 2).

Per sweep: one Optuna study in an RDB (`storage`; its name is `study_name`, else
`<preset>_<task>_<student>_<hash>` from `study_identity`), one MLflow parent run (tag
`role=sweep`), and per trial a child run made by the trial itself (`tracking.parent_run_id`),
tagged with the trial number and the sampled values. Re-running the same sweep resumes the study
and its parent; several processes or machines sharing the storage work on one study.

Sharing is safe: creating the study and the parent run, and asking for trials, happen under a lock
held in the study's database (`kdsuite.stores.lock.database_lock`), so there is one parent per study
and a sampler always sees the trials other workers have started; and each trial's sampler is
seeded by the trial's number (`sampling.py`), so no two workers draw the same parameters.

`n_jobs` trials are asked at once and handed to the launcher together; a parallel launcher
(`hydra/launcher=processes`, `submitit_local`, `submitit_slurm`) runs them at the same time, each
in its own process, and on this machine the CPU threads are split between them.

A sweep killed outright leaves its trials RUNNING; the next sweep on the study fails them once
their heartbeats stop (`heartbeat.py`), so `max_trials` tops the study up to its full size.

A trial that raises is FAIL in Optuna (PRUNED when it was pruned) and FAILED in MLflow; the sweep
goes on, and the parent counts the failures. If every trial of the invocation failed, the parent
ends FAILED with the first error as tag `error`, and the sweep raises (a non-zero exit). At the end
the parent gets the best trial's params and value, a per-trial table (CSV and Markdown) and
Optuna's plots, also written to the sweep folder.
"""


import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.kdsuite_optuna_sweeper.heartbeat import (
    StaleTrials,
    TrialHeartbeats,
    grace_period,
    quiet_heartbeat_warnings,
)
from hydra_plugins.kdsuite_optuna_sweeper.sampling import TrialSeededSampler
from hydra_plugins.kdsuite_optuna_sweeper.search_space import split_overrides
from hydra_plugins.kdsuite_optuna_sweeper.study_identity import StudyIdentity, identify
from kdsuite import tracking_names as names
from kdsuite.config_checks import check_settings
from kdsuite.distributed import world_size
from kdsuite.private_api import optuna_trial_id
from kdsuite.reports import sweep_report
from kdsuite.stores.check import check_store
from kdsuite.stores.lock import database_lock, sqlite_lock
from kdsuite.stores.optuna_trial import open_storage, trial_overrides

log = logging.getLogger(__name__)

SEQUENTIAL_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
MAX_TAG_LENGTH = 5000
DEFAULT_SAMPLER = {"_target_": "optuna.samplers.TPESampler", "seed": None}


class SweepFailed(RuntimeError):
    """Every trial of a sweep invocation failed."""


@dataclass
class TrialOutcome:
    number: int
    state: optuna.trial.TrialState
    value: float | None = None
    error: str | None = None


def without_password(url: str | None) -> str:
    """The storage URL as it may be logged: any password replaced by ***."""
    if not url or "@" not in url:
        return str(url)
    import sqlalchemy

    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def _built(spec: Any) -> Any:
    """A pruner given as a `_target_` config, or None."""
    if spec is None or not isinstance(spec, (dict, DictConfig)):
        return spec
    return instantiate(spec)


def split_cpu_threads(n_jobs: int) -> int | None:
    """Give each of `n_jobs` trial processes on this machine an equal share of its CPU cores by
    setting OMP/MKL/OpenBLAS thread counts in the environment trial processes inherit (torch reads
    OMP_NUM_THREADS when it starts). Returns the threads per trial; None when the user set them."""
    if any(name in os.environ for name in THREAD_VARIABLES):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // n_jobs)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    return threads


class KdsuiteOptunaSweeper(Sweeper):
    def __init__(self, study_name, storage, direction, n_trials, n_jobs, sampler, pruner, params, max_trials=None,
                 heartbeat_interval=None):
        if n_jobs < 1 or n_trials < 1:
            raise ValueError(f"hydra.sweeper: n_jobs={n_jobs} and n_trials={n_trials} must both be >= 1")
        if max_trials is not None and max_trials < 1:
            raise ValueError(f"hydra.sweeper.max_trials={max_trials}: must be >= 1, or null for no limit")
        if heartbeat_interval is not None and heartbeat_interval < 1:
            raise ValueError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval}: must be >= 1 (seconds), "
                             "or null for no heartbeats")
        self.max_trials = max_trials
        self.heartbeat_interval = heartbeat_interval
        self.study_name = study_name
        self.storage = storage
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler_spec = sampler if sampler is not None else DEFAULT_SAMPLER
        self.pruner = _built(pruner)
        self.params = dict(params or {})

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.config_loader = hydra_context.config_loader  # used by validate_batch_is_legal
        launcher = config.hydra.launcher._target_
        if self.n_jobs > 1 and launcher in SEQUENTIAL_LAUNCHERS:
            raise ValueError(
                f"hydra.sweeper.n_jobs={self.n_jobs} runs trials at the same time, but Hydra's basic "
                "launcher runs them one after another: add hydra/launcher=processes (on this machine), "
                "hydra/launcher=submitit_local or hydra/launcher=submitit_slurm"
            )
        if self.n_jobs > 1 and "slurm" not in launcher.lower():
            threads = split_cpu_threads(self.n_jobs)
            if threads is not None:
                log.info("%d trials at once on this machine: %d CPU threads each", self.n_jobs, threads)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    # -- study and parent run ---------------------------------------------------------------
    def _study_lock(self, study_name: str):
        """Serialises study creation, parent-run creation and asks across every worker."""
        return database_lock(self.storage, f"kdsuite_optuna_study:{study_name}") if self.storage else nullcontext()

    def _shared_config(self, fixed: list[str]) -> DictConfig:
        """The config every trial shares: the fixed overrides, the swept keys at their defaults."""
        return self.config_loader.load_sweep_config(self.config, list(fixed))

    def _identity(self, composed: DictConfig, space: dict) -> StudyIdentity:
        preset = self.config.hydra.runtime.choices.get("sweep")
        return identify(composed, space.keys(), preset)

    def _parent_run(self, study_name: str, identity: StudyIdentity) -> tuple[mlflow.MlflowClient, str]:
        """The sweep's MLflow parent run: the one this study already has, or a new one. Called
        under the study lock, so concurrent workers find the one the first of them made."""
        tracking = self.config.tracking
        with sqlite_lock(tracking.uri):  # a new SQLite tracking store is created once
            client = mlflow.MlflowClient(tracking.uri)
            experiment = client.get_experiment_by_name(tracking.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(tracking.experiment)
            except MlflowException:  # made meanwhile by a process outside this study
                experiment_id = client.get_experiment_by_name(tracking.experiment).experiment_id
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{names.ROLE} = '{names.SWEEP}' and tags.{names.OPTUNA_STUDY} = '{study_name}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(
                experiment_id,
                run_name=f"sweep-{study_name}",
                tags={names.ROLE: names.SWEEP, names.OPTUNA_STUDY: study_name,
                      names.OPTUNA_STORAGE: without_password(self.storage)},
            ).info.run_id
        client.set_tag(run_id, names.STUDY_HASH, identity.hash)
        client.log_text(
            run_id,
            OmegaConf.to_yaml(OmegaConf.create({
                "study_name": study_name, "default_name": identity.default_name, "hash": identity.hash,
                "excluded": list(identity.excluded), "hashed_config": identity.hashed_config,
            })),
            "sweep/study_identity.yaml",
        )
        return client, run_id

    # -- trials -----------------------------------------------------------------------------
    def _trial_overrides(self, fixed, trial, study_name, parent_run_id) -> list[str]:
        sampled = [f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"
                   for name, value in trial.params.items()]
        bookkeeping = [
            f"tracking.parent_run_id={parent_run_id}",
            f"+tracking.tags.{names.OPTUNA_STUDY}={study_name}",
            f"+tracking.tags.{names.OPTUNA_TRIAL}={trial.number}",
        ]
        if self.storage:
            bookkeeping += trial_overrides(self.storage, study_name, optuna_trial_id(trial))
        return [*fixed, *sampled, *bookkeeping]

    @staticmethod
    def _child_run(client, experiment_id, parent_run_id, number):
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.{names.OPTUNA_TRIAL} = '{number}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return found[0] if found else None

    def _launch(self, jobs: list[list[str]], numbers: list[int]):
        """Run the jobs; each job's number (and output subfolder) is its trial's number. Numbers
        asked under the lock are consecutive; enqueued trials may not be, and go one by one."""
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return list(self.launcher.launch(jobs, initial_job_idx=numbers[0]))
        return [ret for job, number in zip(jobs, numbers) for ret in self.launcher.launch([job], number)]

    def sweep(self, arguments: list[str]) -> None:
        if world_size() > 1:
            raise RuntimeError(
                f"kdsuite_optuna sweeper: not started under torchrun/accelerate launch (WORLD_SIZE="
                f"{world_size()}): each process would run its own sweep and ask Optuna for trials of "
                f"its own. Start one sweep per GPU instead, e.g. CUDA_VISIBLE_DEVICES=0 python run.py "
                f"-m ..., all with the same hydra.sweeper.storage (README: 'More than one GPU')"
            )
        fixed, space = split_overrides(arguments, self.params)
        if not space:
            raise ValueError(
                "kdsuite_optuna sweeper: nothing to search; give hydra.sweeper.params or sweep "
                "overrides such as 'loss.alpha_traj=interval(0.1,10)'"
            )
        shared = self._shared_config(fixed)
        identity = self._identity(shared, space)
        check_store(self.config.tracking.uri)
        study_name = self.study_name or identity.default_name
        stale = StaleTrials()
        with quiet_heartbeat_warnings():
            storage = open_storage(self.storage, self.heartbeat_interval,
                                   grace_period(self.heartbeat_interval) if self.heartbeat_interval else None, stale)
        with self._study_lock(study_name):
            study = optuna.create_study(
                study_name=study_name, storage=storage, sampler=TrialSeededSampler(self.sampler_spec),
                pruner=self.pruner, direction=self.direction, load_if_exists=True,
            )
            client, parent_run_id = self._parent_run(study_name, identity)
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        log.info("study %s (%d earlier trials) in %s; MLflow parent run %s; experiment hash %s",
                 study_name, len(study.trials), self.storage, parent_run_id, identity.hash)

        outcomes: list[TrialOutcome] = []
        pending: list[optuna.Trial] = []  # asked, not told yet
        try:
            # the settings every trial shares, checked once here: a bad one fails the sweep (its parent
            # FAILED, naming the key) before any trial starts, instead of failing every trial alike
            check_settings(shared)
            exhausted = False
            while len(outcomes) < self.n_trials and not exhausted:
                with self._study_lock(study_name):
                    stale.fail(study)  # a killed sweep's trials, before they are counted as taken
                    batch = min(self.n_jobs, self.n_trials - len(outcomes), self._room(study))
                    with quiet_heartbeat_warnings():
                        pending = [study.ask(space) for _ in range(batch)]
                if not pending:
                    log.info("study %s holds max_trials=%d trials that did not fail: nothing to add",
                             study_name, self.max_trials)
                    break
                jobs = [self._trial_overrides(fixed, t, study_name, parent_run_id) for t in pending]
                self.validate_batch_is_legal(jobs)
                with TrialHeartbeats(storage, pending):  # alive until told, MLflow bookkeeping included
                    returns = self._launch(jobs, [trial.number for trial in pending])
                    for trial, job in zip(list(pending), returns):
                        outcome, stop = self._tell(study, trial, job)
                        pending.remove(trial)
                        outcomes.append(outcome)
                        exhausted |= stop
                        self._record_trial(client, experiment_id, parent_run_id, trial, outcome)
            self._report(study, client, experiment_id, parent_run_id)
        except BaseException as error:
            for trial in pending:  # not left RUNNING, where samplers would count them as taken
                try:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                except Exception as tell_error:  # the sweep's own error is the one to raise
                    log.warning("could not mark trial %d FAIL: %s", trial.number, tell_error)
            client.set_tag(parent_run_id, names.ERROR, f"{type(error).__name__}: {error}"[:MAX_TAG_LENGTH])
            client.set_terminated(parent_run_id, status="FAILED")
            raise
        failed = [outcome for outcome in outcomes if outcome.state == optuna.trial.TrialState.FAIL]
        if outcomes and len(failed) == len(outcomes):
            first = f"trial {failed[0].number}: {failed[0].error}"
            client.set_tag(parent_run_id, names.ERROR, first[:MAX_TAG_LENGTH])
            client.set_terminated(parent_run_id, status="FAILED")
            raise SweepFailed(f"all {len(failed)} trials of study {study_name} failed; first error: {first}")
        client.set_terminated(parent_run_id, status="FINISHED")

    def _room(self, study: optuna.Study) -> int:
        """How many more trials `max_trials` allows (asked under the study lock, so it counts the
        trials other workers are running)."""
        if self.max_trials is None:
            return self.n_trials
        held = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.FAIL]
        return max(0, self.max_trials - len(held))

    @staticmethod
    def _tell(study: optuna.Study, trial: optuna.Trial, job) -> tuple[TrialOutcome, bool]:
        """Record the job's outcome in the study. Returns it, and True when the sampler has
        exhausted its space.

        Grid and brute-force samplers call `study.stop()` once every point is tried, which Optuna
        refuses outside `optimize()`; the result is stored before that call, so it only means stop.
        """
        states = optuna.trial.TrialState
        error = job._return_value
        if job.status == JobStatus.COMPLETED and job.return_value is not None:
            value = float(job.return_value)
            outcome, told = TrialOutcome(trial.number, states.COMPLETE, value), {"values": value}
        elif isinstance(error, optuna.TrialPruned):
            outcome, told = TrialOutcome(trial.number, states.PRUNED), {"state": states.PRUNED}
            log.info("trial %d pruned", trial.number)
        else:
            if isinstance(error, BaseException):
                message = f"{type(error).__name__}: {error}"
            else:
                message = f"returned {error!r}, not a number"
            outcome, told = TrialOutcome(trial.number, states.FAIL, error=message), {"state": states.FAIL}
            trial.set_user_attr(names.ERROR, message[:MAX_TAG_LENGTH])  # trials.csv's `error` column
            log.warning("trial %d failed: %s; the sweep goes on", trial.number, message)
        try:
            stored = study.tell(trial, **told, skip_if_finished=True)
        except RuntimeError as stop:
            if "Study.stop" not in str(stop):
                raise
            log.info("the sampler has tried its whole search space; the sweep stops")
            return outcome, True
        if stored.state != outcome.state:  # failed meanwhile as stale: its heartbeats could not be written
            log.warning("trial %d was already %s in the study (stale heartbeat); its %s result is not kept",
                        trial.number, stored.state.name, outcome.state.name)
            outcome = TrialOutcome(trial.number, stored.state,
                                   error=f"failed as stale before its result ({outcome.state.name}) was told")
        return outcome, False

    def _record_trial(self, client, experiment_id, parent_run_id, trial, outcome: TrialOutcome) -> None:
        """Tag the trial's child run with its sampled values; log its value on the parent."""
        child = self._child_run(client, experiment_id, parent_run_id, trial.number)
        if child is not None:
            for name, value in trial.params.items():
                client.set_tag(child.info.run_id, f"sampled.{name}", str(value))
        if outcome.value is not None:
            client.log_metric(parent_run_id, "trial_value", outcome.value, step=trial.number)

    # -- end of sweep -----------------------------------------------------------------------
    def _report(self, study, client, experiment_id, parent_run_id) -> None:
        trials = study.trials
        run_ids = {}
        for trial in trials:
            child = self._child_run(client, experiment_id, parent_run_id, trial.number)
            if child is not None:
                run_ids[trial.number] = child.info.run_id
        report_dir = self.sweep_dir / "optuna"
        files = sweep_report.write_table(sweep_report.trial_rows(study, run_ids), report_dir)
        files += sweep_report.write_plots(study, report_dir)
        for path in files:
            client.log_artifact(parent_run_id, str(path), artifact_path="sweep")
        counts = {state: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
        summary = {
            "study_name": study.study_name, "n_trials": len(trials),
            "n_complete": counts[optuna.trial.TrialState.COMPLETE],
            "n_failed": counts[optuna.trial.TrialState.FAIL],
            "n_pruned": counts[optuna.trial.TrialState.PRUNED],
        }
        now_ms = int(1000 * time.time())
        client.log_batch(parent_run_id, metrics=[
            mlflow.entities.Metric(key, value, now_ms, 0) for key, value in summary.items() if key != "study_name"
        ])
        failed = [str(t.number) for t in trials if t.state == optuna.trial.TrialState.FAIL]
        client.set_tag(parent_run_id, names.FAILED_TRIALS, ",".join(failed) or "none")
        if summary["n_complete"]:
            best = study.best_trial
            client.log_metric(parent_run_id, "best_value", best.value)
            for name, value in best.params.items():  # tags, not params: a resumed sweep updates them
                client.set_tag(parent_run_id, f"{names.BEST_PREFIX}{name}", str(value))
            client.set_tag(parent_run_id, names.BEST_TRIAL, str(best.number))
            if best.number in run_ids:
                client.set_tag(parent_run_id, names.BEST_RUN_ID, run_ids[best.number])
            summary.update(best_trial=best.number, best_value=best.value, best_params=best.params)
        (report_dir / "best.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(summary)))
        log.info("sweep %s: %s", study.study_name, summary)
