"""SIGTERM/SIGINT become RunKilled; a checkpoint save finishes before the signal is raised, and a
save cut short leaves no folder that looks like a checkpoint."""

from __future__ import annotations

import os
import signal

import pytest
from transformers import BertConfig, BertForSequenceClassification, Trainer

from kdsuite.losses.base import LossContext
from kdsuite.losses.ce import CELoss
from kdsuite.signals import RunKilled, deferred_signals, stop_on_signals
from kdsuite.tracks import get_task
from kdsuite.trainer import DistillationTrainer, training_arguments


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_raise_run_killed_naming_the_signal(signum):
    with pytest.raises(RunKilled, match=f"stopped by {signal.Signals(signum).name}"):
        with stop_on_signals():
            os.kill(os.getpid(), signum)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_a_signal_during_a_save_waits_for_the_save():
    finished = []
    with pytest.raises(RunKilled, match="SIGTERM"):
        with stop_on_signals():
            with deferred_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                finished.append("save")  # still runs: the signal is held back
    assert finished == ["save"]


def tiny_trainer(tmp_path) -> DistillationTrainer:
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, num_labels=2)
    model = BertForSequenceClassification(config)
    args = training_arguments({"max_steps": 1, "save_total_limit": 2, "bf16": False}, str(tmp_path), seed=0)
    trainer = DistillationTrainer(model=model, args=args, distillation_loss=CELoss(LossContext(get_task("rte"))))
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    return trainer


def test_checkpoints_are_renamed_into_place_and_rotated(tmp_path):
    trainer = tiny_trainer(tmp_path)
    for step in (1, 2, 3):
        trainer.state.global_step = step
        trainer._save_checkpoint(trainer.model, trial=None)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert (tmp_path / "checkpoint-3" / "trainer_state.json").is_file()


def test_a_save_cut_short_leaves_no_checkpoint(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path)
    trainer.state.global_step = 5

    def dies_after_the_weights(self, output_dir):
        raise RunKilled("SIGKILL-like stop after the weights were written")

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", dies_after_the_weights)
    with pytest.raises(RunKilled):
        trainer._save_checkpoint(trainer.model, trial=None)
    assert not list(tmp_path.glob("checkpoint-*"))
