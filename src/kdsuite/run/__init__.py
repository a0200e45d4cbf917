"""One run of the suite, on top of the core (tasks, mapping, models, losses, trainer) and the data:

- `assembly`: `build_run(cfg)`, every check and everything built before the long work, then
  `build_student` and `build_trainer`;
- `job`: `train(cfg) -> float`, the order of work of `run.py`;
- `teacher_cache`: fine-tuned teachers, once per (teacher, dataset, recipe), under a file lock;
- `tracking`: every MLflow call;
- `pruning`: Optuna pruning inside a sweep trial.

`train` is imported on first use: the light modules here (`optuna_trial`, `store_lock`,
`tracking`) serve the sweeper's parent process and the experiment scripts, which should not pay for
the training stack (transformers' Trainer, about 7 s on a 2-core CPU) to read a config or a store.
"""

__all__ = ["train"]


def __getattr__(name: str):
    if name == "train":
        from kdsuite.run.job import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
