"""Every use of another library's private API, each behind one small wrapper that says why it is
needed, so that a release that changes one breaks here, in one place, and `tests/test_private_api.py`
names which. Upper bounds at the next major version in pyproject.toml guard the rest.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

# Trainer methods that DistillationTrainer overrides or patches (transformers keeps them private):
# `_save_checkpoint(model, trial)` to write checkpoints atomically, `_get_output_dir(trial)` to point
# that write at a staging folder, `_save_rng_state(output_dir)` to keep the rollout's state beside
# the RNG states.
TRAINER_HOOKS = {"_save_checkpoint": ("model", "trial"), "_get_output_dir": ("trial",),
                 "_save_rng_state": ("output_dir",)}


def reset_accelerator_state() -> None:
    """Forget accelerate's process-wide mixed-precision state, keeping the process group.

    accelerate keeps one AcceleratorState per process and refuses a second mixed precision, but one
    process builds several Trainers: the teacher's fine-tune and then the student (on a CPU the
    former in fp32, the latter perhaps in bf16), or a sweep worker's successive trials."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


@contextmanager
def checkpoints_written_to(trainer, folder: str) -> Iterator[None]:
    """Make the Trainer's `_save_checkpoint` write under `folder` (a staging folder renamed into
    place afterwards): it takes its run folder from `_get_output_dir`, which an instance attribute
    shadows for the duration."""
    trainer._get_output_dir = lambda trial=None: folder
    try:
        yield
    finally:
        del trainer._get_output_dir


def ddp_ignore(module, names: list[str]) -> None:
    """Keep the named parameters and buffers of `module` out of DDP's broadcast and gradient sync:
    a loss's own buffers that every rank keeps equal by itself (CoDIR's memory banks). torch has no
    public way to say so before DDP wraps the module."""
    from torch.nn.parallel import DistributedDataParallel

    ignored = list(getattr(module, "_ddp_params_and_buffers_to_ignore", []))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        module, ignored + [name for name in names if name not in ignored])


def prepare_for_training(trainer, max_steps: int):
    """What `Trainer.train` does before its loop (wrap and `accelerator.prepare` the model, create
    and prepare the optimizer and scheduler), through the Trainer's own private method, so that the
    step benches time exactly the preparation a run gets. Used by the benches only, never by a run.
    Returns the prepared model."""
    model, _ = trainer._prepare_for_training(max_steps, None, None)
    return model


def optuna_trial_id(trial) -> int:
    """The storage's id of an asked trial (its number is per study; the id is what a trial process
    needs to report to the same row, and what heartbeats are written for)."""
    return trial._trial_id
