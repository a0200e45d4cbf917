#!/usr/bin/env bash
# The encoder baselines side by side at the CPU budget (results/baselines.md, "CPU section"):
#   GLUE_DIR=../shared/data/glue bash experiments/grids/baselines_cpu.sh [TRACKING_URI]
# MiniLM teacher -> bert2l on STS-B, its first 2,000 training pairs (dataset.max_train_samples),
# 3 epochs at lr 3e-4, fp32 (this recipe runs on a 2-core CPU without bf16 instructions; it is not
# the GLUE record's bf16 recipe, so its runs have their own record, baselines_cpu_runs.csv).
# Rows: ce, kd, pkd, distilbert, tinybert, minilm v1, minilm v2, fdd and codir at their YAML
# defaults, seeds SEEDS (1 2 3), two processes. tinybert runs its teacher live (teacher.outputs=live:
# its official MSEs include padding positions, which the store cannot hold); the others read the
# store. Per seed: the six families of one variant label in one multirun over two processes, then
# tinybert and minilm v1 side by side (one process each), then minilm v2. Resumable like every grid
# (experiments/grids/glue_grid.sh): a point in the record or FINISHED in the store is not trained again.
# After each seed the record and the table are rebuilt; with COMMIT=1 they are committed, so a
# session cut off mid-grid loses at most the seed it was running.
set -uo pipefail
cd "$(dirname "$0")/../.."
export URI="${1:-sqlite:///mlflow.db}" EXPERIMENT=baselines_cpu TASKS=stsb STUDENT=bert2l
export RECORD=experiments/results/baselines_cpu_runs.csv
export RECIPE="trainer.num_train_epochs=3 trainer.learning_rate=3e-4 trainer.bf16=false"
export EXTRA="dataset.max_train_samples=2000"
# tinybert's two stages in these 189 steps (3 epochs of 63 batches): the intermediate layers for two
# epochs, the prediction layer for the last one. Pinned, so that every seed of the record has the
# same split: the YAML default (null, the official 10/13 of a run: 145 here) came after seed 1, and
# the old default (1000 batches, longer than this whole run) is now refused before any work.
TINYBERT_INTERMEDIATE=126
rows="ce kd pkd distilbert tinybert minilm_v1 minilm_v2 fdd codir"
status=0
for seed in ${SEEDS:-1 2 3}; do
  SEEDS=$seed LOSSES=ce,kd,pkd,distilbert,fdd,codir bash experiments/grids/glue_grid.sh || status=1
  # two one-process grids side by side, one thread each (as the multirun's two processes have)
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 SEEDS=$seed JOBS=1 LOSSES=tinybert OUTPUTS=live \
    EXTRA="$EXTRA loss.intermediate_batches=$TINYBERT_INTERMEDIATE" bash experiments/grids/glue_grid.sh & tinybert=$!
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 SEEDS=$seed JOBS=1 LOSSES=minilm VARIANT=minilm_v1 \
    EXTRA="$EXTRA loss.version=v1" bash experiments/grids/glue_grid.sh || status=1
  wait $tinybert || status=1
  SEEDS=$seed JOBS=1 LOSSES=minilm VARIANT=minilm_v2 EXTRA="$EXTRA loss.version=v2" \
    bash experiments/grids/glue_grid.sh || status=1
  # shellcheck disable=SC2086  # rows is a list of labels
  python experiments/reports/compare_glue.py --tracking-uri "$URI" --experiment "$EXPERIMENT" --tasks stsb \
    --losses $rows --record baselines_cpu_runs.csv --table baselines || status=1
  if [ "${COMMIT:-0}" = 1 ]; then
    git commit -q -m "baselines CPU grid: seed $seed recorded (experiments/grids/baselines_cpu.sh)" \
      -- "$RECORD" experiments/results/baselines.md experiments/results/baselines_bert2l.png || true
  fi
done
exit $status
