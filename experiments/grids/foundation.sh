#!/usr/bin/env bash
# Foundation evidence: the MiniLM teacher fine-tuned on the full RTE and MRPC train sets, and a
# bert2l student trained with loss=ce and loss=kd on each. Every run goes to one MLflow store;
# experiments/reports/summarize_runs.py turns it into experiments/results/foundation.md.
#   GLUE_DIR=../shared/data/glue bash experiments/grids/foundation.sh [TRACKING_URI]
# The student lr 1e-4 is pinned: the recipe these tables were made with (the default is now 3e-4).
set -euo pipefail
cd "$(dirname "$0")/../.."
uri="${1:-sqlite:///mlflow.db}"
for task in rte mrpc; do
  for loss in ce kd; do
    python run.py dataset="$task" student=bert2l loss="$loss" seed=42 trainer.learning_rate=1e-4 \
      tracking.uri="$uri" tracking.experiment=foundation
  done
done
