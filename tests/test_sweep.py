"""Optuna sweeps through Hydra multirun (`kdsuite_optuna` sweeper), on tiny models and small real
data: trials in the RDB study, one MLflow parent run with a child per trial, the best trial
reported, resuming with new parameters, a study per experiment, and failing trials that surface."""

import re

import optuna
import pytest
from omegaconf import OmegaConf
from sweep_runs import children_of, mlflow_runs, sweep, sweep_parents

from kdsuite.reports.selection import newest_sweep_parent, selected_overrides, selection_id

STUDY_NAME = re.compile(r"^fdd_weights_rte_bert2l_[0-9a-f]{10}$")


def only_study(tmp_path, known=()) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    [name] = [name for name in optuna.get_all_study_names(storage) if name not in known]
    return optuna.load_study(study_name=name, storage=storage)


@pytest.mark.slow(seconds=75)
def test_fdd_weight_sweep_tracks_parent_children_and_best(tmp_path, glue_dir):
    sweep(tmp_path, glue_dir, "sweep=fdd_weights", "hydra.sweeper.n_trials=2")
    study = only_study(tmp_path)
    assert STUDY_NAME.match(study.study_name), study.study_name  # <preset>_<task>_<student>_<hash>
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert set(study.trials[0].params) == {"loss.alpha_traj", "loss.beta_delta", "loss.temperature"}

    client, runs = mlflow_runs(tmp_path)
    [parent] = sweep_parents(runs)
    children = children_of(runs, parent)
    assert len(children) == 2 and all(child.info.status == "FINISHED" for child in children)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna_study"] == study.study_name
    assert study.study_name.endswith(parent.data.tags["study_hash"])
    assert len([run for run in runs if run.data.tags.get("role") == "teacher"]) == 1  # cached once
    for child in children:
        trial = study.trials[int(child.data.tags["optuna_trial"])]
        assert child.data.metrics["final_metric"] == pytest.approx(trial.value)
        assert child.data.params["loss.alpha_traj"] == str(trial.params["loss.alpha_traj"])
        assert child.data.tags["sampled.loss.beta_delta"] == str(trial.params["loss.beta_delta"])
        assert "train/traj" in child.data.metrics  # the full run, as a single run logs it

    best = study.best_trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    # What experiments/grids/tuned.sh trains on fresh seeds: the best trial's values, read back from MLflow.
    assert newest_sweep_parent(client, "kdsuite", "fdd_weights", "rte", "bert2l").info.run_id == parent.info.run_id
    assert newest_sweep_parent(client, "kdsuite", "kd_weights", "rte", "bert2l") is None
    assert selected_overrides(parent) == [f"{name}={value}" for name, value in sorted(best.params.items())]
    assert selection_id(parent) == f"{study.study_name}/{best.number}"
    assert parent.data.tags["best_trial"] == str(best.number)
    for name, value in best.params.items():
        assert parent.data.tags[f"best.{name}"] == str(value)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/trials.md", "sweep/optimization_history.png",
            "sweep/study_identity.yaml"} <= artifacts
    identity = client.download_artifacts(parent.info.run_id, "sweep/study_identity.yaml", str(tmp_path))
    identity = OmegaConf.load(identity)
    assert identity.hash == parent.data.tags["study_hash"] and identity.study_name == study.study_name
    assert identity.hashed_config.trainer.learning_rate == 3e-4
    assert "alpha_traj" not in identity.hashed_config.loss and "loss.alpha_traj" in identity.excluded
    table = (tmp_path / "multirun" / "optuna" / "trials.md").read_text()
    assert table.count("COMPLETE") == 2

    # The same command again resumes the study and the parent run, with parameters of its own.
    sweep(tmp_path, glue_dir, "sweep=fdd_weights", "hydra.sweeper.n_trials=1")
    study = only_study(tmp_path)
    assert len(study.trials) == 3
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3
    client, runs = mlflow_runs(tmp_path)
    assert [p.info.run_id for p in sweep_parents(runs)] == [parent.info.run_id]
    assert len(children_of(runs, parent)) == 3

    # max_trials sizes the study: an invocation tops it up to that many, then adds nothing.
    for _ in range(2):
        sweep(tmp_path, glue_dir, "sweep=fdd_weights", "hydra.sweeper.n_trials=5", "hydra.sweeper.max_trials=4")
        assert len(only_study(tmp_path).trials) == 4
    _, runs = mlflow_runs(tmp_path)
    assert len(children_of(runs, parent)) == 4 and sweep_parents(runs)[0].info.status == "FINISHED"

    # Other trainer settings are another experiment: a study and a parent run of their own.
    sweep(tmp_path, glue_dir, "sweep=fdd_weights", "hydra.sweeper.n_trials=1", "trainer.learning_rate=3e-3")
    other = only_study(tmp_path, known={study.study_name})
    assert STUDY_NAME.match(other.study_name) and other.study_name != study.study_name
    assert len(other.trials) == 1 and len(only_study(tmp_path, known={other.study_name}).trials) == 4
    _, runs = mlflow_runs(tmp_path)
    assert {p.data.tags["optuna_study"] for p in sweep_parents(runs)} == {study.study_name, other.study_name}


@pytest.mark.slow(seconds=15)
def test_failing_trial_is_fail_and_failed_and_the_sweep_goes_on(tmp_path, glue_dir):
    sweep(
        tmp_path, glue_dir, "hydra/sweeper=kdsuite_optuna", "loss=kd", "trainer.logging_steps=2",
        "loss._target_=choice(kdsuite.losses.kd.KDLoss,failing_losses.NaNLoss)",
        "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=failing",
    )
    # An explicit study name wins over the default one.
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}") == ["failing"]
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
    [parent] = sweep_parents(runs)
    assert parent.info.status == "FINISHED"  # some trials failed: the sweep finishes and counts them
    assert parent.data.metrics["n_failed"] == 1 and parent.data.metrics["n_complete"] == 1
    failed = [t.number for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert parent.data.tags["failed_trials"] == str(failed[0])


@pytest.mark.slow(seconds=15)
def test_sweep_whose_trials_all_fail_exits_nonzero_with_a_failed_parent(tmp_path, glue_dir):
    result = sweep(
        tmp_path, glue_dir, "hydra/sweeper=kdsuite_optuna", "loss=kd", "loss.temperature=choice(-1.0,-2.0)",
        "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler", "hydra.sweeper.n_trials=2",
        check=False,
    )
    assert result.returncode != 0
    assert "all 2 trials of study" in result.stderr
    study = only_study(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    _, runs = mlflow_runs(tmp_path)
    [parent] = sweep_parents(runs)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error"].startswith("trial 0: ")
    assert "temperature" in parent.data.tags["error"]


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
