"""The `kdsuite_optuna` Hydra sweeper.

Hydra keeps what it does well (composing each trial's config from overrides, output folders, the
launcher that runs jobs); Optuna does the searching through ask/tell, so any current Optuna
release works (the published `hydra-optuna-sweeper` pins optuna<3, whose SQL storage breaks
under SQLAlchemy 2).

Per sweep: one Optuna study in an RDB (`storage`, `study_name`; re-running resumes it, and several
processes or machines sharing the URL work on one study, Optuna's distributed mode), one MLflow
parent run (tag `role=sweep`, resumed with the study), and per trial a child run made by the
trial itself (`tracking.parent_run_id`), tagged with the trial number and the sampled values. A
trial that raises is FAIL in Optuna (PRUNED when it was pruned) and FAILED in MLflow; the sweep
goes on. At the end the parent run gets the best trial's params and value, a per-trial table
(CSV and Markdown) and Optuna's plots, also written to the sweep folder.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import mlflow
import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.kdsuite_optuna_sweeper.search_space import split_overrides
from kdsuite.distributed import world_size
from kdsuite.reports import sweep_report

log = logging.getLogger(__name__)


def _built(spec: Any) -> Any:
    """Sampler/pruner given as an object (Hydra instantiates plugins recursively) or a config."""
    if spec is None or not isinstance(spec, (dict, DictConfig)):
        return spec
    return instantiate(spec)


class KdsuiteOptunaSweeper(Sweeper):
    def __init__(self, study_name, storage, direction, n_trials, n_jobs, sampler, pruner, params):
        self.study_name = study_name
        self.storage = storage
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = max(1, n_jobs)
        self.sampler = _built(sampler)
        self.pruner = _built(pruner)
        self.params = dict(params or {})

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.config_loader = hydra_context.config_loader  # used by validate_batch_is_legal
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    # -- study and parent run ---------------------------------------------------------------
    def _study_name(self, fixed: list[str], space: dict) -> str:
        if self.study_name:
            return self.study_name
        key = repr((sorted(fixed), sorted((name, repr(dist)) for name, dist in space.items())))
        return "kdsuite_" + hashlib.sha256(key.encode()).hexdigest()[:12]

    def _parent_run(self, client: mlflow.MlflowClient, study_name: str) -> str:
        """The sweep's MLflow parent run: the one this study already has, or a new one."""
        tracking = self.config.tracking
        experiment = client.get_experiment_by_name(tracking.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracking.experiment)
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.role = 'sweep' and tags.optuna_study = '{study_name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        run = client.create_run(
            experiment_id,
            run_name=f"sweep-{study_name}",
            tags={"role": "sweep", "optuna_study": study_name, "optuna_storage": str(self.storage)},
        )
        return run.info.run_id

    # -- trials -----------------------------------------------------------------------------
    def _trial_overrides(self, fixed, trial, study_name, parent_run_id) -> list[str]:
        sampled = [f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"
                   for name, value in trial.params.items()]
        bookkeeping = [
            f"tracking.parent_run_id={parent_run_id}",
            f"+tracking.tags.optuna_study={study_name}",
            f"+tracking.tags.optuna_trial={trial.number}",
        ]
        if self.storage:
            bookkeeping += [
                f"+optuna.storage='{self.storage}'",
                f"+optuna.study_name={study_name}",
                f"+optuna.trial_id={trial._trial_id}",
            ]
        return [*fixed, *sampled, *bookkeeping]

    @staticmethod
    def _child_run(client, experiment_id, parent_run_id, number):
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.optuna_trial = '{number}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return found[0] if found else None

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
        study_name = self._study_name(fixed, space)
        study = optuna.create_study(
            study_name=study_name, storage=self.storage, sampler=self.sampler, pruner=self.pruner,
            direction=self.direction, load_if_exists=True,
        )
        client = mlflow.MlflowClient(self.config.tracking.uri)
        parent_run_id = self._parent_run(client, study_name)
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        log.info("study %s (%d earlier trials) in %s; MLflow parent run %s",
                 study_name, len(study.trials), self.storage, parent_run_id)

        try:
            launched, exhausted = 0, False
            while launched < self.n_trials and not exhausted:
                batch = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - launched))]
                jobs = [self._trial_overrides(fixed, t, study_name, parent_run_id) for t in batch]
                self.validate_batch_is_legal(jobs)
                returns = self.launcher.launch(jobs, initial_job_idx=launched)
                for trial, job in zip(batch, returns):
                    exhausted |= self._tell(study, trial, job)
                    child = self._child_run(client, experiment_id, parent_run_id, trial.number)
                    if child is not None:
                        for name, value in trial.params.items():
                            client.set_tag(child.info.run_id, f"sampled.{name}", str(value))
                launched += len(batch)
            self._report(study, client, experiment_id, parent_run_id)
        except BaseException:
            client.set_terminated(parent_run_id, status="FAILED")
            raise
        client.set_terminated(parent_run_id, status="FINISHED")

    @staticmethod
    def _tell(study: optuna.Study, trial: optuna.Trial, job) -> bool:
        """Record the job's outcome in the study; True when the sampler has exhausted its space.

        Grid and brute-force samplers call `study.stop()` once every point is tried, which Optuna
        refuses outside `optimize()`; the result is stored before that call, so it only means stop.
        """
        if job.status == JobStatus.COMPLETED and job.return_value is not None:
            outcome = {"values": float(job.return_value)}
        elif isinstance(job._return_value, optuna.TrialPruned):
            outcome = {"state": optuna.trial.TrialState.PRUNED}
            log.info("trial %d pruned", trial.number)
        else:
            outcome = {"state": optuna.trial.TrialState.FAIL}
            log.warning("trial %d failed: %r; the sweep goes on", trial.number, job._return_value)
        try:
            study.tell(trial, **outcome)
        except RuntimeError as error:
            if "Study.stop" not in str(error):
                raise
            log.info("the sampler has tried its whole search space; the sweep stops")
            return True
        return False

    # -- end of sweep -----------------------------------------------------------------------
    def _report(self, study, client, experiment_id, parent_run_id) -> None:
        run_ids = {}
        for trial in study.trials:
            child = self._child_run(client, experiment_id, parent_run_id, trial.number)
            if child is not None:
                run_ids[trial.number] = child.info.run_id
            if trial.value is not None:
                client.log_metric(parent_run_id, "trial_value", trial.value, step=trial.number)
        report_dir = self.sweep_dir / "optuna"
        files = sweep_report.write_table(sweep_report.trial_rows(study, run_ids), report_dir)
        files += sweep_report.write_plots(study, report_dir)
        for path in files:
            client.log_artifact(parent_run_id, str(path), artifact_path="sweep")
        finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        summary = {"study_name": study.study_name, "n_trials": len(study.trials), "n_complete": len(finished)}
        if finished:
            best = study.best_trial
            client.log_metric(parent_run_id, "best_value", best.value)
            for name, value in best.params.items():  # tags, not params: a resumed sweep updates them
                client.set_tag(parent_run_id, f"best.{name}", str(value))
            client.set_tag(parent_run_id, "best_trial", str(best.number))
            if best.number in run_ids:
                client.set_tag(parent_run_id, "best_run_id", run_ids[best.number])
            summary.update(best_trial=best.number, best_value=best.value, best_params=best.params)
        (report_dir / "best.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(summary)))
        log.info("sweep %s: %s", study.study_name, summary)

