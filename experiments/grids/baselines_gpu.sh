#!/usr/bin/env bash
# The encoder baselines at the GLUE record's recipe (results/baselines_gpu.md, the GPU section of
# results/baselines.md): MiniLM teacher -> bert2l on RTE, MRPC and STS-B, 3 epochs at lr 3e-4, bf16,
# seeds SEEDS (1 2 3). Run it on a GPU or a CPU with bf16 instructions (it stops before any work
# where bf16 would be emulated):
#   GLUE_DIR=../shared/data/glue bash experiments/grids/baselines_gpu.sh [TRACKING_URI]
# ce, kd, fdd and codir are the GLUE record's rows (glue_runs.csv, same recipe): only points that
# the record lacks are trained, so a session that has them trains only pkd, distilbert, tinybert
# and minilm v1/v2 into the same record. tinybert runs its teacher live (its official MSEs include
# padding positions, which the teacher-output store cannot hold); the others read the store.
set -uo pipefail
cd "$(dirname "$0")/../.."
export URI="${1:-sqlite:///mlflow.db}" EXPERIMENT=glue TASKS=rte,mrpc,stsb STUDENT=bert2l
export RECORD=experiments/results/glue_runs.csv
export RECIPE="trainer.num_train_epochs=3 trainer.learning_rate=3e-4 trainer.bf16=true"  # glue.sh's
# shellcheck disable=SC2086  # RECIPE is a list of overrides
python -m kdsuite.bf16_check $RECIPE || exit $?  # bf16 emulated on this CPU: days, not hours
seeds="${SEEDS:-1 2 3}"
status=0
SEEDS="$seeds" LOSSES=ce,kd,pkd,distilbert,fdd,codir bash experiments/grids/glue_grid.sh || status=1
SEEDS="$seeds" LOSSES=tinybert OUTPUTS=live bash experiments/grids/glue_grid.sh || status=1
for version in v1 v2; do
  SEEDS="$seeds" LOSSES=minilm VARIANT="minilm_$version" EXTRA="loss.version=$version" \
    bash experiments/grids/glue_grid.sh || status=1
done
python experiments/reports/compare_glue.py --tracking-uri "$URI" --tasks rte mrpc stsb \
  --losses ce kd pkd distilbert tinybert minilm_v1 minilm_v2 fdd codir --table baselines_gpu || status=1
exit $status
