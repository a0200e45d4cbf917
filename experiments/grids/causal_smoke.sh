#!/usr/bin/env bash
# The causal-LM track end to end on tiny random models (seconds per run): a synthetic Dolly-format
# JSONL, the tiny GPT-2 teacher fine-tuned (SFT) once, then the tiny LLaMA student with ce (SFT),
# kd (forward, reverse and skew KL) and fdd (logit lens), then the table from MLflow.
#   bash experiments/grids/causal_smoke.sh [TRACKING_URI]
set -euo pipefail
cd "$(dirname "$0")/../.."
uri="${1:-sqlite:///mlflow.db}"
data="$(mktemp -d)/dolly_sample.jsonl"
python experiments/tools/make_dolly_sample.py "$data" --rows 64
common=(experiment=causal_smoke dataset.path="$data" tracking.uri="$uri" tracking.experiment=causal_smoke)
python run.py "${common[@]}" loss=ce
for divergence in forward_kl reverse_kl skew_kl; do
  python run.py "${common[@]}" loss=kd loss.temperature=1 loss.divergence="$divergence" \
    +tracking.tags.variant="kd_$divergence"
done
python run.py "${common[@]}" loss=fdd
python experiments/reports/summarize_causal.py --tracking-uri "$uri" --experiment causal_smoke \
  --out experiments/results/causal_smoke.md
