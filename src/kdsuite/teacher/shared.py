"""The teacher of a run on several processes: fine-tuned once, by one single process, then loaded
from the cache by every rank.

A missing teacher is fine-tuned by a child of the main process started without the launcher's
variables (it calls `kdsuite.run.job.finetune_teacher_from(<config.yaml>)`), so its recipe is exactly the
single-process one: same batch size, same steps, same cache entry as a `python run.py` run would
make, and one `role=teacher` MLflow run. (In the run's own processes the Trainer would wrap it in
DDP and multiply its batch by the number of processes.) A cached teacher not yet scored under the
run's scoring settings is scored by such a child too. The other ranks wait at a barrier
meanwhile, then everyone loads the cached teacher.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

from omegaconf import OmegaConf, open_dict

from kdsuite import distributed
from kdsuite.teacher.cache import FineTunedTeacher, entry_problem, move_aside, needs_scores

# What the child runs: the run's own job module fetches the teacher (named as text, so that this
# package does not import the run that imports it).
CHILD_CODE = "import sys; from kdsuite.run.job import finetune_teacher_from; finetune_teacher_from(sys.argv[1])"


def teacher_for_every_process(run, prepare_teacher: Callable[[object], FineTunedTeacher]) -> FineTunedTeacher:
    """`prepare_teacher(run)` on one process; on several, a cold cache is filled once first.
    `run` is a `kdsuite.run.assembly.Run` (its `cfg`, `out_dir` and `teacher_entry` are read)."""
    if distributed.world_size() == 1:
        return prepare_teacher(run)
    with distributed.main_process_first():
        entry = run.teacher_entry
        problem = entry_problem(entry.path) if distributed.is_main_process() else None
        if problem is not None:  # missing or damaged: rebuilt by one process, never by the DDP group
            if problem != "missing":
                move_aside(entry.path, problem)
            finetune_in_child_process(run)
        elif distributed.is_main_process() and needs_scores(entry):  # new scoring settings: scored the same way
            finetune_in_child_process(run)
        return prepare_teacher(run)


def finetune_in_child_process(run) -> None:
    """Fine-tune and cache the run's teacher in a single-process child (see the module docstring)."""
    cfg = run.cfg.copy()
    with open_dict(cfg):
        cfg.output_dir = str(run.out_dir / "teacher_job")
    run.out_dir.mkdir(parents=True, exist_ok=True)
    config_path = run.out_dir / "teacher_job.yaml"
    OmegaConf.save(cfg, config_path, resolve=True)
    command = [sys.executable, "-c", CHILD_CODE, str(config_path)]
    result = subprocess.run(command, env=distributed.single_process_environment())
    if result.returncode != 0:
        raise RuntimeError(
            f"fine-tuning teacher {cfg.teacher.name!r} on {cfg.dataset.name!r} in a single process "
            f"failed (exit {result.returncode}; its output is above): {' '.join(command)}"
        )
