"""One run of the suite, on top of the core (tasks, mapping, models, losses, trainer) and the data:

- `assembly`: `build_run(cfg)`, every check and everything built before the long work, then
  `build_student` and `build_trainer`;
- `job`: `train(cfg) -> float`, the order of work of `run.py`;
- `teacher_cache`: fine-tuned teachers, once per (teacher, dataset, recipe), under a file lock;
- `tracking`: every MLflow call;
- `pruning`: Optuna pruning inside a sweep trial.
"""

from kdsuite.run.job import train

__all__ = ["train"]
