#!/usr/bin/env bash
# Sweep evidence: FDD weights on the MiniLM teacher -> bert2l, MRPC full train set, 1 epoch per
# trial (the CPU budget here), 12 TPE trials, plus one run with the default weights under the
# same settings for reference.
#   GLUE_DIR=../shared/data/glue bash experiments/grids/sweep_fdd.sh [TRACKING_URI] [OPTUNA_STORAGE]
# then: python experiments/reports/summarize_runs.py --experiment sweeps --out experiments/results/sweeps.md
# The student lr 1e-4 is pinned: the recipe these tables were made with (the default is now 3e-4).
set -euo pipefail
cd "$(dirname "$0")/../.."
uri="${1:-sqlite:///mlflow.db}"
storage="${2:-sqlite:///optuna.db}"
common=(dataset=mrpc student=bert2l trainer.num_train_epochs=1 trainer.learning_rate=1e-4 trainer.eval_strategy=no seed=42
        tracking.uri="$uri" tracking.experiment=sweeps)
python run.py loss=fdd "${common[@]}"
python run.py -m sweep=fdd_weights "${common[@]}" hydra.sweeper.n_trials=12 hydra.sweeper.storage="$storage"
