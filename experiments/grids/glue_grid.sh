#!/usr/bin/env bash
# The GLUE grid on Hydra's multirun: for each seed, one multirun over tasks x losses (or ablation
# variants), its runs spread over JOBS processes by hydra/launcher=processes. Resumable: every run
# has resume=true, so a point that FINISHED returns its result at once and a re-run of this script
# trains only what is missing (README: "When things go wrong"). Points already in the CSV record
# (RECORD, default experiments/results/glue_runs.csv: what earlier sessions ran, on stores that
# are gone) are not trained again: `python -m kdsuite.reports.grid_points` turns each seed's missing points into
# the multiruns to run. Students read the teacher's outputs from the teacher-output store
# (teacher.outputs=cached), built once per task and loss.
#   GLUE_DIR=../shared/data/glue EXPERIMENT=glue RECIPE="trainer.learning_rate=3e-4" \
#       bash experiments/grids/glue_grid.sh
# Settings (environment): URI (MLflow, sqlite:///mlflow.db), EXPERIMENT, SEEDS ("1 2 3 4 5"),
# TASKS (rte,mrpc,stsb,cola,sst2_8k), STUDENT (bert2l), LOSSES (ce,kd,fdd,codir), VARIANT (a name
# tagged on every run, for the ablation's variants), JOBS (processes, 2), RECIPE and EXTRA (more
# run.py overrides), RECORD (empty: none), OUTPUTS (teacher.outputs: cached, or live for a loss that
# refuses the store, such as tinybert and minilm). A failed run is FAILED in MLflow and ends its seed's multirun; the next seed
# goes on, and a re-run retries it.
set -uo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC2086  # RECIPE and EXTRA are lists of overrides
python -m kdsuite.bf16_check ${RECIPE:-} ${EXTRA:-} || exit $?  # bf16 emulated on this CPU: days, not hours
jobs=${JOBS:-2}
cores=$(nproc)
threads=$(( cores / jobs > 0 ? cores / jobs : 1 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} MKL_NUM_THREADS=${MKL_NUM_THREADS:-$threads}
tag=(); [ -n "${VARIANT:-}" ] && tag=("+tracking.tags.variant=$VARIANT")
status=0
record=${RECORD-experiments/results/glue_runs.csv}  # RECORD= (empty): no record, MLflow's resume alone
for seed in ${SEEDS:-1 2 3 4 5}; do
  multiruns=$(python -m kdsuite.reports.grid_points ${record:+--record "$record"} --datasets "${TASKS:-rte,mrpc,stsb,cola,sst2_8k}" \
    --losses "${LOSSES:-ce,kd,fdd,codir}" --seed "$seed" --student "${STUDENT:-bert2l}" ${VARIANT:+--variant "$VARIANT"}) \
    || { echo "seed $seed: could not read the record $record"; status=1; continue; }
  [ -z "$multiruns" ] && { echo "seed $seed: every point is in $record"; continue; }
  while read -r points; do
    # shellcheck disable=SC2086  # points, RECIPE and EXTRA are lists of overrides
    python run.py -m $points "seed=$seed" "student=${STUDENT:-bert2l}" "teacher.outputs=${OUTPUTS:-cached}" resume=true \
      ${RECIPE:-} ${EXTRA:-} "${tag[@]}" "tracking.uri=${URI:-sqlite:///mlflow.db}" \
      "tracking.experiment=${EXPERIMENT:-glue}" hydra/launcher=processes "hydra.launcher.n_jobs=$jobs" \
      < /dev/null || { echo "seed $seed ($points): a run failed (FAILED in MLflow); re-run this script to retry it"; status=1; }
  done <<< "$multiruns"
done
exit $status
