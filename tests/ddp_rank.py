"""What a DDP test worker (ddp_baselines_worker.py, ddp_codir_worker.py) does on its rank before
training: compose `conf/` with the worker's overrides, build the run, join the process group, and
build the Trainer on the tiny random teacher (seeded, not fine-tuned: what these workers test is
the student's training across processes, and a fine-tune would only add a cache race)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from transformers import Trainer, TrainerCallback, set_seed

from kdsuite import distributed, models
from kdsuite.run.assembly import build_run, build_student, build_trainer

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def rank_trainer(overrides: list[str],
                 callbacks: Callable[[object, object], list[TrainerCallback]]) -> tuple[object, Trainer]:
    """(run, trainer) on this rank; `callbacks(run, student)` gives the Trainer's callbacks. The
    seed is set before the teacher and again before the student, so every rank and a single
    process start from the same weights."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    run = build_run(cfg)
    distributed.setup(run.student_args)
    set_seed(cfg.seed)
    teacher = models.load_pretrained_teacher(cfg.teacher, run.task)
    set_seed(cfg.seed)
    student = build_student(run, teacher)
    return run, build_trainer(run, student, run.loss, teacher, run.student_args, callbacks(run, student))
