"""Pruning inside sweep trials: each evaluation is reported, a pruned trial stops and its MLflow
run ends KILLED (not FAILED)."""

from types import SimpleNamespace

import mlflow
import optuna
import pytest

from kdsuite.run import tracking
from kdsuite.run.pruning import OptunaPruningCallback


def test_callback_reports_and_prunes():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.6))
    trial = study.ask()
    callback = OptunaPruningCallback(trial, "accuracy")
    state = SimpleNamespace(global_step=10)
    callback.on_evaluate(None, state, None, metrics={"eval_accuracy": 0.7})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {10: 0.7}
    callback.on_evaluate(None, SimpleNamespace(global_step=20), None, metrics={"final_accuracy": 0.1})  # ignored
    with pytest.raises(optuna.TrialPruned, match="pruned at step 30 with accuracy=0.5000"):
        callback.on_evaluate(None, SimpleNamespace(global_step=30), None, metrics={"eval_accuracy": 0.5})


def test_pruned_run_is_killed_in_mlflow(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("pruning")
    with pytest.raises(optuna.TrialPruned):
        with tracking.tracked_run("pruned", {"role": "student"}) as run:
            raise optuna.TrialPruned("stop")
    pruned = mlflow.MlflowClient().get_run(run.info.run_id)
    assert pruned.info.status == "KILLED"
    assert pruned.data.tags["pruned"] == "true" and "error" not in pruned.data.tags


def test_sweeper_overrides_name_the_trial_that_pruning_reports_to(make_config, tmp_path):
    """The sweeper's `optuna.*` overrides compose without `+` and lead pruning to the same trial."""
    from kdsuite.run.pruning import pruning_callbacks
    from kdsuite.stores.optuna_trial import trial_overrides

    assert pruning_callbacks(make_config(), "accuracy") == []  # a plain run: the keys are null
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.ask()
    trial = study.ask()
    [callback] = pruning_callbacks(make_config(*trial_overrides(storage, "s", trial._trial_id)), "accuracy")
    callback.on_evaluate(None, SimpleNamespace(global_step=3), None, metrics={"eval_accuracy": 0.5})
    reloaded = optuna.load_study(study_name="s", storage=storage).trials
    assert reloaded[1].intermediate_values == {3: 0.5} and reloaded[0].intermediate_values == {}
