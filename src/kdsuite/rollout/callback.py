"""The Trainer side of a rollout source: step timing for `rollout/time_fraction`, the validation
loss DistiLLM's schedule reads, and the source's state in every checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from kdsuite.distributed import all_reduce_sum
from kdsuite.rollout.settings import resolved_validation_interval
from kdsuite.rollout.sources import RolloutSource, state_file_name

log = logging.getLogger(__name__)


@torch.no_grad()
def validation_loss(trainer) -> float:
    """The student's task loss on the evaluation set: the mean over batches of each batch's loss
    (as DistiLLM's `evaluate` averages), over every process's shard under DDP."""
    model = trainer.model
    was_training = model.training
    totals = torch.zeros(2, dtype=torch.float64, device=trainer.args.device)  # loss sum, batches
    for batch in trainer.get_eval_dataloader():
        loss, _, _ = trainer.prediction_step(model, batch, prediction_loss_only=True)
        totals += torch.stack([loss.double(), loss.new_ones((), dtype=torch.float64)])
    model.train(was_training)
    totals = all_reduce_sum(totals)
    return (totals[0] / totals[1]).item()


def save_state(source: RolloutSource, checkpoint_dir: str | Path, rank: int) -> None:
    torch.save(source.state_dict(), Path(checkpoint_dir) / state_file_name(rank))


def load_state(source: RolloutSource, checkpoint_dir: str | Path, rank: int) -> None:
    """Restore the source from a checkpoint; a checkpoint without the file is refused (resuming
    without it would restart the schedule and empty the replay buffer, silently)."""
    path = Path(checkpoint_dir) / state_file_name(rank)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: checkpoint {Path(checkpoint_dir).name} was written without the rollout's state "
            f"(schedule, replay buffer), so resuming it would not continue the run; start the run afresh"
        )
    source.load_state_dict(torch.load(path, weights_only=False))
    log.info("rollout state restored from %s", path)


class RolloutCallback(TrainerCallback):
    """Times whole optimizer steps and, for sources that read it, measures the validation loss
    before training and every `rollout.validation_interval` steps (null: once per epoch, the
    optimizer steps of one epoch counted from the training set's size, the per-device batch size,
    the accumulation steps and the number of processes)."""

    def __init__(self, trainer, source: RolloutSource):
        self.trainer, self.source = trainer, source
        self.step_started = None
        self.validation_interval = None
        if source.evaluates:
            args = trainer.args
            self.validation_interval = resolved_validation_interval(
                source.settings, len(trainer.train_dataset), args.per_device_train_batch_size,
                args.gradient_accumulation_steps, args.world_size)
            log.info("rollout: validation loss every %d optimizer steps", self.validation_interval)

    def on_train_begin(self, args, state, control, **kwargs):
        # the Trainer loads a resumed checkpoint's state only after this event: whether the reference
        # loss exists (restored with the source's state) is what says a run starts afresh
        if self.source.evaluates and self.source.needs_reference_loss:
            self.source.observe_validation_loss(validation_loss(self.trainer))

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_started is not None:
            self.source.cost.add_step(time.perf_counter() - self.step_started)
        if self.source.evaluates and state.global_step % self.validation_interval == 0:
            self.source.observe_validation_loss(validation_loss(self.trainer))
