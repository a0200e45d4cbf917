"""The teacher of a run on several processes: fine-tuned once, by one single process, then loaded
from the cache by every rank.

A missing teacher is fine-tuned by a child of the main process started without the launcher's
variables (it calls `main(<config.yaml>)` of this module), so its recipe is exactly the
single-process one: same batch size, same steps, same cache entry as a `python run.py` run would
make, and one `role=teacher` MLflow run. (In the run's own processes the Trainer would wrap it in
DDP and multiply its batch by the number of processes.) The other ranks wait at a barrier
meanwhile, then everyone loads the cached teacher.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

from omegaconf import OmegaConf, open_dict

from kdsuite import distributed
from kdsuite.run import teacher_cache
from kdsuite.run.assembly import Run


def teacher_for_every_process(run: Run, prepare_teacher: Callable[[Run], teacher_cache.FineTunedTeacher]):
    """`prepare_teacher(run)` on one process; on several, a cold cache is filled once first."""
    if distributed.world_size() == 1:
        return prepare_teacher(run)
    with distributed.main_process_first():
        entry = run.teacher_entry
        if distributed.is_main_process() and not (entry.path / teacher_cache.META_FILE).is_file():
            finetune_in_child_process(run)
        return prepare_teacher(run)


def finetune_in_child_process(run: Run) -> None:
    """Fine-tune and cache the run's teacher in a single-process child (see the module docstring)."""
    cfg = run.cfg.copy()
    with open_dict(cfg):
        cfg.output_dir = str(run.out_dir / "teacher_job")
    run.out_dir.mkdir(parents=True, exist_ok=True)
    config_path = run.out_dir / "teacher_job.yaml"
    OmegaConf.save(cfg, config_path, resolve=True)
    child_code = "import sys; from kdsuite.run.shared_teacher import main; main(sys.argv[1])"
    command = [sys.executable, "-c", child_code, str(config_path)]
    result = subprocess.run(command, env=distributed.single_process_environment())
    if result.returncode != 0:
        raise RuntimeError(
            f"fine-tuning teacher {cfg.teacher.name!r} on {cfg.dataset.name!r} in a single process "
            f"failed (exit {result.returncode}; its output is above): {' '.join(command)}"
        )


def main(config_path: str) -> None:
    """The child: build the run from the saved config and fetch (fine-tune and cache) its teacher."""
    from kdsuite.run import tracking
    from kdsuite.run.assembly import build_run
    from kdsuite.run.job import prepare_teacher

    cfg = OmegaConf.load(config_path)
    run = build_run(cfg)
    tracking.configure(cfg.tracking)
    prepare_teacher(run)
