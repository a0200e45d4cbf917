#!/usr/bin/env bash
# Issue-6 evidence in one command: the multi-seed GLUE comparison (ce, kd, fdd, codir; MiniLM
# teacher -> bert2l) and the FDD ablation (kd, +traj, +delta, both), both resumable.
#   GLUE_DIR=../shared/data/glue bash experiments/glue.sh [TRACKING_URI]
# Students train 1 epoch (CPU budget; see experiments/results/glue.md for why that is not a
# handicap here). SEEDS="1 2 3 4 5" for more seeds; finished runs are never repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
uri="${1:-sqlite:///mlflow.db}"
common=(--tracking-uri "$uri" --seeds ${SEEDS:-1 2 3} --override trainer.num_train_epochs=1)
python experiments/compare_glue.py --tasks ${TASKS:-rte mrpc stsb cola sst2} "${common[@]}"
python experiments/compare_glue.py --tasks rte mrpc stsb --losses kd fdd_traj fdd_delta fdd --table ablation "${common[@]}"
