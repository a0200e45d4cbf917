"""The names kdsuite stores in MLflow: run roles, tags and metrics. Writers (`run/tracking.py`, the
sweeper) and readers (`reports/`, `cli/report.py`) import them from here, so a report cannot look
for a name that no run writes. The values are what stores already hold: never change one.
"""

# Tag ROLE: what a run is.
ROLE = "role"
STUDENT = "student"  # a distilled (or ce-trained) student: one point of a comparison
TEACHER = "teacher"  # a teacher fine-tuned (or scored) once per cache entry
SWEEP = "sweep"  # the parent run of an Optuna study; its trials are student runs
COMPARISON = "comparison"  # a table built from finished runs (compare_methods, compare_glue.py)

# Tags of a student run (a teacher run has ROLE, TEACHER_NAME and DATASET).
LOSS = "loss"  # the loss family (ce, kd, fdd, ...)
VARIANT = "variant"  # an ablation's label (fdd_traj: fdd with beta_delta=0); absent on plain runs
DATASET = "dataset"
TEACHER_NAME = "teacher"  # the teacher's config name (minilm); also a value of ROLE above
STUDENT_NAME = "student"  # the student's config name (bert2l); also a value of ROLE above
SEED = "seed"
MAIN_METRIC = "main_metric"  # the name of the task's main metric (accuracy, f1, spearman, rougeL)
ERROR = "error"  # a FAILED or KILLED run's exception or signal
RESUMED_FROM_STEP = "resumed_from_step"
SCORED_FROM_CACHE = "scored_from_cache"  # on a teacher run that scored a cached teacher under new settings: its entry
TEACHER_SCORES_RUN_ID = "teacher_scores_run_id"  # on a student: the teacher run whose scores it logs as teacher/*
OPTUNA_TRIAL = "optuna_trial"  # set on a sweep trial
ENVIRONMENT = "environment"  # versions and device

# Tags of a sweep's parent run (ROLE = SWEEP) and of a comparison run (ROLE = COMPARISON).
OPTUNA_STUDY = "optuna_study"  # the study's name; also on each trial
OPTUNA_STORAGE = "optuna_storage"  # the study's storage URL, password hidden
STUDY_HASH = "study_hash"
BEST_TRIAL = "best_trial"
BEST_RUN_ID = "best_run_id"
BEST_PREFIX = "best."  # best.<swept key>: the best trial's value of it
FAILED_TRIALS = "failed_trials"
COMPARISON_OF = "comparison"  # on a comparison and its student runs: the multirun folder compared

# Metrics.
FINAL_METRIC = "final_metric"  # the task's main dev metric after training: the run's objective


def final(name: str) -> str:
    """`final/<name>`: a dev metric after training (`final/f1`)."""
    return f"final/{name}"


def teacher_metric(name: str) -> str:
    """`teacher/<name>`: the run's teacher on the same dev metric."""
    return f"teacher/{name}"
