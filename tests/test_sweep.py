"""Optuna sweeps through Hydra multirun (`kdsuite_optuna` sweeper), on tiny models and small real
data: trials in the RDB study, one MLflow parent run with a child per trial, the best trial
reported, resuming, and a failing trial that does not stop the sweep."""

import os
import subprocess
import sys

import mlflow
import optuna
import pytest

from conftest import REPO

FAST = [
    "experiment=smoke", "trainer.max_steps=2", "trainer.eval_strategy=no", "teacher.finetune.max_steps=2",
    "dataset.max_train_samples=32", "dataset.max_eval_samples=32",
]


def sweep(tmp_path, glue_dir, *overrides):
    command = [
        sys.executable, str(REPO / "run.py"), "-m", *FAST, *overrides,
        f"dataset.data_dir={glue_dir}", f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    # tests/ for the failing losses, then whatever PYTHONPATH already names (a worktree's src/)
    paths = [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def mlflow_runs(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdsuite")
    return client, client.search_runs([experiment.experiment_id])


def test_fdd_weight_sweep_tracks_parent_children_and_best(tmp_path, glue_dir):
    sweep(tmp_path, glue_dir, "sweep=fdd_weights", "hydra.sweeper.n_trials=3")
    study = optuna.load_study(study_name="fdd_weights_rte_bert2l", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert set(study.trials[0].params) == {"loss.alpha_traj", "loss.beta_delta", "loss.temperature"}

    client, runs = mlflow_runs(tmp_path)
    [parent] = [run for run in runs if run.data.tags.get("role") == "sweep"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and all(child.info.status == "FINISHED" for child in children)
    assert parent.info.status == "FINISHED"
    assert len([run for run in runs if run.data.tags.get("role") == "teacher"]) == 1  # cached once
    for child in children:
        trial = study.trials[int(child.data.tags["optuna_trial"])]
        assert child.data.metrics["final_metric"] == pytest.approx(trial.value)
        assert child.data.params["loss.alpha_traj"] == str(trial.params["loss.alpha_traj"])
        assert child.data.tags["sampled.loss.beta_delta"] == str(trial.params["loss.beta_delta"])
        assert "train/traj" in child.data.metrics  # the full run, as a single run logs it

    best = study.best_trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best_trial"] == str(best.number)
    for name, value in best.params.items():
        assert parent.data.tags[f"best.{name}"] == str(value)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/trials.md", "sweep/optimization_history.png"} <= artifacts
    table = (tmp_path / "multirun" / "optuna" / "trials.md").read_text()
    assert table.count("COMPLETE") == 3

    # The same command again resumes the study and the parent run.
    sweep(tmp_path, glue_dir, "sweep=fdd_weights", "hydra.sweeper.n_trials=2")
    study = optuna.load_study(study_name="fdd_weights_rte_bert2l", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 5
    client, runs = mlflow_runs(tmp_path)
    assert len([run for run in runs if run.data.tags.get("role") == "sweep"]) == 1
    assert len([run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]) == 5


def test_failing_trial_is_fail_and_failed_and_the_sweep_goes_on(tmp_path, glue_dir):
    sweep(
        tmp_path, glue_dir, "hydra/sweeper=kdsuite_optuna", "loss=kd", "trainer.logging_steps=2",
        "loss._target_=choice(kdsuite.losses.kd.KDLoss,failing_losses.NaNLoss)",
        "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=failing",
    )
    study = optuna.load_study(study_name="failing", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = {t.params["loss._target_"]: t.state for t in study.trials}
    assert states == {
        "kdsuite.losses.kd.KDLoss": optuna.trial.TrialState.COMPLETE,
        "failing_losses.NaNLoss": optuna.trial.TrialState.FAIL,
    }
    _, runs = mlflow_runs(tmp_path)
    children = {run.data.tags.get("sampled.loss._target_"): run.info.status for run in runs
                if run.data.tags.get("role") == "student"}
    assert children == {"kdsuite.losses.kd.KDLoss": "FINISHED", "failing_losses.NaNLoss": "FAILED"}
    [parent] = [run for run in runs if run.data.tags.get("role") == "sweep"]
    assert parent.info.status == "FINISHED"


def test_search_space_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.kdsuite_optuna_sweeper.search_space import split_overrides

    fixed, space = split_overrides(
        ["dataset=rte", "loss.alpha_traj=interval(0.5,2)", "seed=1,2,3"],
        {"loss.alpha_traj": "tag(log, interval(0.1, 10))", "loss.beta_delta": "tag(log, interval(0.1, 10))",
         "student.num_layers": "range(2, 5)"},
    )
    assert fixed == ["dataset=rte"]
    assert space["loss.alpha_traj"] == FloatDistribution(0.5, 2.0)  # the command line wins
    assert space["loss.beta_delta"] == FloatDistribution(0.1, 10.0, log=True)
    assert space["student.num_layers"] == IntDistribution(2, 4)
    assert space["seed"] == CategoricalDistribution([1, 2, 3])
