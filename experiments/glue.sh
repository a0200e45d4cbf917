#!/usr/bin/env bash
# Issue-6 evidence in one command: the multi-seed GLUE comparison (ce, kd, fdd, codir; MiniLM
# teacher -> bert2l) and the FDD ablation (kd, +traj, +delta, both), both resumable.
#   GLUE_DIR=../shared/data/glue bash experiments/glue.sh [TRACKING_URI]
# Students train 1 epoch at lr 1e-4, pinned here so a change of the trainer defaults does not
# change a resumed grid (CPU budget; experiments/results/recipe.md shows what this recipe costs).
# SEEDS="1 2 3 4 5" for more seeds; finished runs are never repeated. The last two lines are the
# student recipe check (STS-B, 3 epochs: ce at three learning rates, then the four losses at
# 3e-4 over three seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
uri="${1:-sqlite:///mlflow.db}"
common=(--tracking-uri "$uri" --seeds ${SEEDS:-1 2 3} --override trainer.num_train_epochs=1 trainer.learning_rate=1e-4)
python experiments/compare_glue.py --tasks ${TASKS:-rte mrpc stsb cola sst2} "${common[@]}"
python experiments/compare_glue.py --tasks rte mrpc stsb --losses kd fdd_traj fdd_delta fdd --table ablation "${common[@]}"
python experiments/student_recipe.py --tracking-uri "$uri" --tasks stsb --losses ce --lrs 1e-4 3e-4 1e-3
python experiments/student_recipe.py --tracking-uri "$uri" --tasks stsb --losses ce kd fdd codir --lrs 3e-4 --seeds 1 2 3
