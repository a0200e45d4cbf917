"""Optuna pruning from inside a sweep trial: report each evaluation's main metric to the trial
the sweeper asked for, and stop the run when the study's pruner says so."""

from __future__ import annotations

import optuna
from omegaconf import DictConfig
from transformers import TrainerCallback

from kdsuite.stores.optuna_trial import open_storage, trial_spec


class OptunaPruningCallback(TrainerCallback):
    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial = trial
        self.metric = metric

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None:
            return
        self.trial.report(value, state.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {state.global_step} with {self.metric}={value:.4f}")


def pruning_callbacks(cfg: DictConfig, metric: str) -> list[TrainerCallback]:
    """The callback for the trial named by the config's `optuna.*` keys, if the sweeper set them
    (pruning needs the study in shared RDB storage, which the sweeper's default SQLite file is)."""
    spec = trial_spec(cfg)
    if spec is None:
        return []
    study = optuna.load_study(study_name=spec["study_name"], storage=open_storage(spec["storage"]))
    return [OptunaPruningCallback(optuna.trial.Trial(study, int(spec["trial_id"])), metric)]
