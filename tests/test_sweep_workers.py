"""Sweeps beyond one process, as real `run.py -m` processes on tiny models and small real data:
two workers started together on one study (in SQLite, and in a real PostgreSQL server), trials
run at once in separate processes (`n_jobs=2` through the `processes` launcher), and trials
launched by submitit (`hydra/launcher=submitit_local`)."""

import json
import os

import optuna
import pytest
from postgres_server import postgres_server, unavailable_reason
from sweep_runs import children_of, finish, mlflow_runs, start_sweep, sweep, sweep_env, sweep_parents

COMPLETE = optuna.trial.TrialState.COMPLETE
PROBE = ["loss._target_=probe_losses.ProbeKDLoss"]  # KD that records its pid and torch threads
# With KDSUITE_PROBE_TOGETHER=2 each trial waits until both have started, and fails if they can't
# be running at once: a COMPLETE trial proves the two ran at the same time.


@pytest.fixture(params=["sqlite", "postgresql"])
def study_storage(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with postgres_server("optuna") as url:
        yield url


def only_study(storage: str) -> optuna.Study:
    [name] = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def distinct(trials) -> int:
    return len({tuple(sorted(t.params.items())) for t in trials})


def probe_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow(seconds=20)
def test_two_workers_started_together_share_one_study_and_one_parent(tmp_path, glue_dir, study_storage):
    # Fresh stores: both workers create optuna.db (SQLite case) and mlflow.db at the same moment.
    overrides = ["sweep=kd_weights", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage='{study_storage}'"]
    workers = [start_sweep(tmp_path, glue_dir, *overrides) for _ in range(2)]
    for worker in workers:
        finish(worker)

    study = only_study(study_storage)
    assert [t.state for t in study.trials] == [COMPLETE] * 4
    assert distinct(study.trials) == 4, [t.params for t in study.trials]
    _, runs = mlflow_runs(tmp_path)
    [parent] = sweep_parents(runs)
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna_study"] == study.study_name
    children = children_of(runs, parent)
    assert sorted(int(child.data.tags["optuna_trial"]) for child in children) == [0, 1, 2, 3]
    assert all(child.info.status == "FINISHED" for child in children)


@pytest.mark.slow(seconds=30)
def test_n_jobs_runs_trials_at_once_in_processes_with_split_threads(tmp_path, glue_dir):
    probe = tmp_path / "probe.jsonl"
    env = sweep_env(KDSUITE_PROBE_FILE=str(probe), KDSUITE_PROBE_TOGETHER="2")  # each trial waits for the other
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(name, None)  # the sweeper, not the caller, splits the threads here
    sweep(tmp_path, glue_dir, "sweep=kd_weights", *PROBE, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
          env=env)

    records = probe_records(probe)
    assert len(records) == 2 and records[0]["pid"] != records[1]["pid"]
    assert [record["threads"] for record in records] == [max(1, len(os.sched_getaffinity(0)) // 2)] * 2
    study = only_study(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [COMPLETE] * 2 and distinct(study.trials) == 2
    _, runs = mlflow_runs(tmp_path)
    [parent] = sweep_parents(runs)
    children = children_of(runs, parent)
    assert len(children) == 2 and all(child.info.status == "FINISHED" for child in children)


@pytest.mark.slow(seconds=30)
def test_submitit_local_launcher_runs_each_trial_as_its_own_job(tmp_path, glue_dir):
    probe = tmp_path / "probe.jsonl"
    env = sweep_env(KDSUITE_PROBE_FILE=str(probe), KDSUITE_PROBE_TOGETHER="2")
    sweep(tmp_path, glue_dir, "sweep=kd_weights", *PROBE, "hydra/launcher=submitit_local",
          "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", env=env)

    assert len({record["pid"] for record in probe_records(probe)}) == 2
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 2  # submitit's jobs
    study = only_study(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [COMPLETE] * 2
    _, runs = mlflow_runs(tmp_path)
    [parent] = sweep_parents(runs)
    assert parent.info.status == "FINISHED"
    assert sorted(int(child.data.tags["optuna_trial"]) for child in children_of(runs, parent)) == [0, 1]
