"""One run of the suite, on top of the core (tasks, mapping, models, losses, trainer), the data,
the teacher (`kdsuite.teacher`) and the stores (`kdsuite.stores`):

- `assembly`: `build_run(cfg)`, every check and everything built before the long work, then
  `build_student` and `build_trainer`;
- `job`: `train(cfg) -> float`, the order of work of `run.py`;
- `run_folder`: where a run keeps its files, and the identity its folder records;
- `tracking`: every MLflow call of a run;
- `pruning`: Optuna pruning inside a sweep trial.

Importing this package imports the training stack (transformers' Trainer). What a sweep's own
process or a report needs without it lives elsewhere: `kdsuite.config_checks`, `kdsuite.stores`,
`kdsuite.tracking_names`, `kdsuite.reports`.
"""

from kdsuite.run.job import train

__all__ = ["train"]
