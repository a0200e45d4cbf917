#!/usr/bin/env bash
# The grid's families tuned by the suite's own sweeps, then reported on fresh seeds (results/tuned.md):
#   GLUE_DIR=../shared/data/glue bash experiments/grids/tuned.sh [TRACKING_URI]
# The tuned families of a task are those of the grid's LOSSES (ce,kd,fdd,codir, glue_grid.sh's
# default: kd, fdd and codir are tuned) that have a sweep preset fitting the task's track
# (experiments/reports/tuned.py losses, from conf/: a causal-only family never enters a GLUE sweep).
# 1. For each tuned loss and task: sweep=<loss>_weights on seed 1 only, TRIALS trials (20; the study is
#    topped up to that size on a re-run, hydra.sweeper.max_trials), JOBS at a time.
# 2. The selected weights (the best trial) on seeds 2-5, into the GLUE experiment tagged
#    variant=<loss>_tuned; the defaults of every loss on the same seeds come from the grid
#    (experiments/grids/glue.sh; run here too for these tasks if missing from this MLflow store: the table
#    is built from the store, and a selection's runs must never be taken for another's, so the
#    grid's CSV record is not consulted here, RECORD=).
# 3. The table: python experiments/reports/tuned.py table.
# Same pinned student recipe as experiments/grids/glue.sh. Settings (environment): TASKS ("mrpc stsb"),
# TRIALS (20), JOBS (2), STUDENT (bert2l), LOSSES (the grid's families, ce,kd,fdd,codir), SEEDS (the report seeds, "2 3 4 5"), RESULTS (where
# tuned.md goes, experiments/results) and RECIPE (the pinned recipe; tests/test_tuned_pipeline.py
# runs the whole pipeline on a tiny teacher through it).
set -uo pipefail
cd "$(dirname "$0")/../.."
export URI="${1:-sqlite:///mlflow.db}"
export RECIPE="${RECIPE:-trainer.num_train_epochs=3 trainer.learning_rate=3e-4 trainer.bf16=true}"
export STUDENT="${STUDENT:-bert2l}"
export LOSSES="${LOSSES:-ce,kd,fdd,codir}"  # the grid's families (glue_grid.sh's default)
# shellcheck disable=SC2086  # RECIPE is a list of overrides
python -m kdsuite.bf16_check $RECIPE || exit $?  # bf16 emulated on this CPU: days, not hours
tasks="${TASKS:-mrpc stsb}"
seeds="${SEEDS:-2 3 4 5}"
jobs=${JOBS:-2}
status=0  # a failed sweep or run is reported at the end; the rest goes on
declare -A tuned=()  # task -> the families tuned on it
for task in $tasks; do
  tuned[$task]=$(python experiments/reports/tuned.py losses --task "$task" --among "$LOSSES") || { status=1; continue; }
  for loss in ${tuned[$task]}; do
    # shellcheck disable=SC2086  # RECIPE is a list of overrides
    python run.py -m "sweep=${loss}_weights" "dataset=$task" "student=$STUDENT" seed=1 $RECIPE \
      teacher.outputs=cached "hydra.sweeper.n_trials=${TRIALS:-20}" "hydra.sweeper.max_trials=${TRIALS:-20}" \
      "hydra.sweeper.n_jobs=$jobs" "tracking.uri=$URI" tracking.experiment=tuned || status=1
  done
done
for task in $tasks; do
  SEEDS="$seeds" TASKS="$task" JOBS=$jobs EXPERIMENT=glue RECORD= bash experiments/grids/glue_grid.sh || status=1
  for loss in ${tuned[$task]:-}; do
    # the selected values, and a tag naming the selection (the table keeps only its runs)
    selected=$(python experiments/reports/tuned.py selected --loss "$loss" --task "$task" --student "$STUDENT" \
      --tracking-uri "$URI") \
      || { status=1; continue; }
    SEEDS="$seeds" TASKS="$task" LOSSES="$loss" EXTRA="$selected" VARIANT="${loss}_tuned" JOBS=$jobs \
      EXPERIMENT=glue RECORD= bash experiments/grids/glue_grid.sh || status=1
  done
done
# shellcheck disable=SC2086
python experiments/reports/tuned.py table --tasks $tasks --among "$LOSSES" --student "$STUDENT" --seeds $seeds \
  --tracking-uri "$URI" \
  --results "${RESULTS:-experiments/results}" || status=1
exit $status
