"""One run on several processes (`torchrun`, `accelerate launch`): which process does what, and
the few collectives the suite adds to the Trainer's own DDP.

Every process runs the same `train(cfg)`. The launcher's variables (`RANK`, `WORLD_SIZE`,
`LOCAL_RANK`) say where a process stands before the process group exists; the Trainer's
arguments create that group (`setup`), with `trainer.ddp_backend` (default: NCCL on CUDA, gloo on
CPU) and `trainer.ddp_timeout`. Process 0 is the main process: it alone writes MLflow, fine-tunes
a missing teacher and saves the student. Without a launcher every helper here is the identity
(world size 1, rank 0), so a single-process run takes no extra step.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

# Variables through which torchrun and accelerate tell a process it is one of several.
LAUNCHER_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
)
# How long the other processes wait for the main one's long single-process work (a teacher
# fine-tune): longer than any fine-tune, unlike the process group's own timeout (30 minutes).
MAIN_WORK_TIMEOUT = timedelta(days=7)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the run: the process group's size, else the launcher's `WORLD_SIZE`, else 1."""
    if is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    """True in a process group of more than one process (collectives are then needed)."""
    return is_initialized() and dist.get_world_size() > 1


def cpu_only_launch() -> bool:
    """True for several processes on a machine without an accelerator: transformers then runs
    DDP on the CPU (gloo) only when told `use_cpu`, and would otherwise train each process alone."""
    return world_size() > 1 and not torch.accelerator.is_available()


def setup(args) -> int:
    """Make sure this process has joined the launcher's process group, as the Trainer does from
    `args` (`TrainingArguments`: `ddp_backend`, `ddp_timeout`), and return the world size.

    transformers joins it when the run's TrainingArguments are built; calling this at the start of
    a run states the requirement, so the teacher and MLflow steps can tell the processes apart
    and wait for each other. The Trainer then reuses the same group.
    """
    _ = args.device  # transformers creates accelerate's PartialState, which joins the group
    return world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first; the others wait, then run it.

    They wait on a gloo group with `MAIN_WORK_TIMEOUT`, not the process group's own timeout, so a
    teacher fine-tune of hours does not time them out (on NCCL runs too: gloo works on CPU). If
    the main process raises, the launcher stops the others.
    """
    if not is_distributed():
        yield
        return
    waiting_room = dist.new_group(backend="gloo", timeout=MAIN_WORK_TIMEOUT)
    if not is_main_process():
        dist.barrier(group=waiting_room)
    yield
    if is_main_process():
        dist.barrier(group=waiting_room)
    dist.destroy_process_group(waiting_room)


def single_process_environment() -> dict[str, str]:
    """This process's environment without the launcher's variables: a child started with it runs
    as a single process (on the main process's devices), not as one rank of the run."""
    return {name: value for name, value in os.environ.items()
            if name not in LAUNCHER_VARIABLES and not name.startswith("TORCHELASTIC_")}


def all_gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate `tensor` (n_r, ...) of every rank along dim 0, in rank order; also return
    where this rank's rows start. Ranks may hold different numbers of rows.

    The result carries no gradient: it is for bookkeeping (memory banks, negative draws).
    """
    if not is_distributed():
        return tensor.detach(), 0
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    all_rows = [torch.zeros_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(all_rows, rows)
    sizes = [int(count) for count in all_rows]
    padded = tensor.detach().new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded.contiguous())
    offset = sum(sizes[: dist.get_rank()])
    return torch.cat([chunk[:size] for chunk, size in zip(gathered, sizes)]), offset


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over ranks (a new tensor; the input is left as it is)."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def on_main_process(function):
    """`function` runs on the main process only; elsewhere the call does nothing and returns None
    (what the suite writes to MLflow or disk is written once per run)."""

    @functools.wraps(function)
    def on_main_only(*args, **kwargs):
        if is_main_process():
            return function(*args, **kwargs)
        return None

    return on_main_only
