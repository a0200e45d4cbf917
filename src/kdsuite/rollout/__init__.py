"""Whose text a training step is computed on (`rollout=dataset|teacher|student|adaptive`).

`build_source(cfg, task, loss_class, tokenizer)` checks `rollout.*` against the run and returns the
source (None for `dataset`, today's behaviour); `prepare_data(run, teacher)` swaps SeqKD's teacher
responses into the training set once the teacher is there. The Trainer calls the source each
micro-batch (`DistillationTrainer.compute_loss`) and keeps its state in the checkpoints
(`rollout_state.pt`).

Modules: `settings` (the checked `rollout.*`), `sampling` (prompts out of a batch, `generate`, the
batch made of its samples), `schedules` (on-policy fraction, DistiLLM's threshold and replay
buffer), `sources` (the per-run objects), `teacher_store` (SeqKD's stored teacher responses),
`callback` (timing, validation loss and checkpoint state on the Trainer's side).
"""

from __future__ import annotations

from kdsuite.rollout.settings import RolloutSettings, check_rollout, rollout_settings
from kdsuite.rollout.sources import SOURCE_CLASSES, STATE_FILE, RolloutSource, state_file_name


def build_source(cfg, task, loss_class, tokenizer) -> RolloutSource | None:
    """The run's rollout source, checked before any work; None for `rollout=dataset`."""
    settings = rollout_settings(cfg.get("rollout"))
    check_rollout(settings, task, loss_class.name, loss_class.needs_teacher, cfg.teacher.get("outputs", "live"))
    if settings.source == "dataset":
        return None
    return SOURCE_CLASSES[settings.source](settings, tokenizer.pad_token_id, tokenizer.eos_token_id, int(cfg.seed))


def checkpoint_files(cfg, world_size: int = 1) -> tuple[str, ...]:
    """The files a checkpoint of this run must hold besides the Trainer's: the rollout source's
    state, one per process (`rollout_state.pt`, then `rollout_state_<rank>.pt`); none for
    `rollout=dataset`. For `run_folder.checkpoint_to_resume(..., extra_files=...)`."""
    if rollout_settings(cfg.get("rollout")).source == "dataset":
        return ()
    return tuple(state_file_name(rank) for rank in range(world_size))


def prepare_data(run, teacher) -> None:
    """With `rollout=teacher`, replace the run's training responses by the teacher's (stored once)."""
    if run.rollout is not None and run.rollout.settings.source == "teacher":
        from kdsuite.rollout.teacher_store import teacher_train_set

        run.data.train_set = teacher_train_set(run, teacher, run.rollout.settings)


__all__ = ["RolloutSettings", "RolloutSource", "STATE_FILE", "build_source", "checkpoint_files", "prepare_data",
           "rollout_settings", "state_file_name"]
