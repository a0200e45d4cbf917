"""The private APIs kdsuite uses (`kdsuite.private_api`) still exist with the shape it relies on: a
release that renames or reshapes one fails here, by name, rather than deep inside a run."""

from __future__ import annotations

import inspect

import optuna
import torch
from accelerate.state import AcceleratorState
from torch.nn.parallel import DistributedDataParallel
from transformers import Trainer

from kdsuite import private_api


def test_accelerate_state_can_be_reset_keeping_the_process_group():
    assert "reset_partial_state" in inspect.signature(AcceleratorState._reset_state).parameters
    private_api.reset_accelerator_state()


def test_trainer_hooks_exist_with_their_arguments():
    for name, arguments in private_api.TRAINER_HOOKS.items():
        method = getattr(Trainer, name, None)
        assert method is not None, f"transformers.Trainer.{name} is gone"
        parameters = list(inspect.signature(method).parameters)[1:]
        assert parameters[: len(arguments)] == list(arguments), f"Trainer.{name}{tuple(parameters)}"


def test_trainer_prepares_for_training_with_the_arguments_the_benches_pass():
    parameters = list(inspect.signature(Trainer._prepare_for_training).parameters)[1:]
    assert parameters[:3] == ["max_steps", "train_dataloader", "resume_from_checkpoint"], parameters


def test_checkpoint_folder_redirect_is_undone():
    class Owner:
        def _get_output_dir(self, trial=None):
            return "run"

    owner = Owner()
    with private_api.checkpoints_written_to(owner, "staging"):
        assert owner._get_output_dir(None) == "staging"
    assert owner._get_output_dir(None) == "run"


def test_ddp_ignore_list_is_set_and_merged():
    module = torch.nn.Linear(2, 2)
    private_api.ddp_ignore(module, ["weight"])
    private_api.ddp_ignore(module, ["bias", "weight"])
    assert hasattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model")
    assert sorted(module._ddp_params_and_buffers_to_ignore) == ["bias", "weight"]


def test_optuna_trial_id_is_the_storage_row():
    study = optuna.create_study()
    trial = study.ask()
    trial_id = private_api.optuna_trial_id(trial)
    assert isinstance(trial_id, int)
    assert study._storage.get_trial(trial_id).number == trial.number
