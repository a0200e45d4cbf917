#!/usr/bin/env bash
# The student recipe check: ce students at several learning rates, each trained EPOCHS epochs with
# a dev evaluation after every epoch, on STS-B, MRPC and CoLA; one Hydra multirun, its runs spread
# over JOBS processes, resumable (resume=true: finished points are not trained again). Then the
# table (experiments/results/recipe.md).
#   GLUE_DIR=../shared/data/glue bash experiments/grids/recipe.sh
# Settings (environment): URI (sqlite:///mlflow.db), STUDENTS (bert2l,bert4l), TASKS
# (stsb,mrpc,cola), LRS (1e-4,3e-4,1e-3), EPOCHS (3), LOSSES (ce), SEEDS (1; Hydra lists, comma-
# separated, as all of these), JOBS (2), BF16 (true:
# students train in bf16 as on a GPU, CPU autocast included), EXTRA.
set -euo pipefail
cd "$(dirname "$0")/../.."
jobs=${JOBS:-2}
threads=$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} MKL_NUM_THREADS=${MKL_NUM_THREADS:-$threads}
uri=${URI:-sqlite:///mlflow.db}
# shellcheck disable=SC2086  # EXTRA is a list of overrides
python -m kdsuite.bf16_check "trainer.bf16=${BF16:-true}" ${EXTRA:-} || exit $?  # bf16 emulated on this CPU
# shellcheck disable=SC2086  # EXTRA is a list of overrides
python run.py -m "student=${STUDENTS:-bert2l,bert4l}" "dataset=${TASKS:-stsb,mrpc,cola}" \
  "trainer.learning_rate=${LRS:-1e-4,3e-4,1e-3}" "trainer.num_train_epochs=${EPOCHS:-3}" \
  "loss=${LOSSES:-ce}" "seed=${SEEDS:-1}" trainer.eval_strategy=epoch "trainer.bf16=${BF16:-true}" \
  teacher.outputs=cached resume=true \
  ${EXTRA:-} "tracking.uri=$uri" tracking.experiment=recipe hydra/launcher=processes "hydra.launcher.n_jobs=$jobs"
python experiments/reports/student_recipe.py --tracking-uri "$uri"
