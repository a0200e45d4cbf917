"""The on-policy comparison: whose text a step trains on (rollout sources) on the causal track.

    python experiments/grids/causal_onpolicy.py --commit                 # CPU grid: runs what is missing
    python experiments/grids/causal_onpolicy.py --gpu --commit           # GPU grid (experiment=causal_gpu)
    python experiments/grids/causal_onpolicy.py --table-only             # rebuild record and table

SmolLM2-135M-Instruct (GGUF, as it comes) -> its 6-block copy on ShareGPT first turns. Rows: sft
(ce), kd (forward KL), seqkd (the teacher's sampled responses, generated once and stored), imitkd
(the student's samples, lambda annealed 0 -> 1), gkd (generalized JSD, beta 0.5, the student's
samples with lambda 0.5), distillm (skew KL 0.1 with the adaptive schedule and replay buffer), fdd
(logit lens) and fdd on the student's samples (`rollout=student`, lambda 0.5; no paper has run it).
Every loss preset sets its paper's defaults (docs/losses/<family>.md).

CPU grid (`causal_onpolicy`): experiment=causal_real with 400 training pairs and 100 steps of 4
(one pass), rows kd, seqkd, gkd, distillm and fdd on the student's samples by default: about 95
minutes of one process per seed at the step costs measured first (results/rollout_cost.md), so the
3 seeds fit about 2 hours of two processes. GPU grid (`causal_onpolicy_gpu`): experiment=causal_gpu,
every row. Each has its own record (`<name>_runs.csv`) and table (`<name>.md`), built by
`kdsuite.reports.causal_grid`, committed seed by seed with --commit.
"""

from __future__ import annotations

import sys

from kdsuite.reports.causal_grid import CausalGrid, main

VARIANTS = {
    "sft": ["loss=ce"],
    "kd": ["loss=kd", "loss.divergence=forward_kl"],
    "seqkd": ["loss=seqkd"],
    "imitkd": ["loss=imitkd"],
    "gkd": ["loss=gkd"],
    "distillm": ["loss=distillm"],
    "fdd": ["loss=fdd", "loss.space=logit_lens"],
    "fdd_student": ["loss=fdd", "loss.space=logit_lens", "rollout=student"],
}

NOTES_CPU = """What this table can and cannot show: 100 steps of batch 4 on a 2-core CPU move a 6-block
copy of SmolLM2 only a little; the validation CE says how far each student got, and ROUGE-L of
sampled responses at this budget mostly measures word salad (the CPU preset's students reached
about 7.4 validation CE against the teacher's 2.1, results/causal_real.md). The cost columns are
this CPU's, one thread per run."""

NOTES_GPU = """Run on one GPU (experiment=causal_gpu: 2,000 training pairs, 500 steps of 16, ROUGE-L
over 3 sampling seeds on 300 test prompts)."""

CPU = CausalGrid(name="causal_onpolicy", preset="causal_real", dataset="sharegpt", student="smollm2_l6",
                 variants=VARIANTS, overrides=["dataset.split_sizes.train=400", "trainer.max_steps=100"],
                 notes=NOTES_CPU, default_variants=["kd", "seqkd", "gkd", "distillm", "fdd_student"])
GPU = CausalGrid(name="causal_onpolicy_gpu", preset="causal_gpu", dataset="sharegpt", student="smollm2_l6",
                 variants=VARIANTS, notes=NOTES_GPU)

if __name__ == "__main__":
    argv = sys.argv[1:]
    main(GPU if "--gpu" in argv else CPU, [a for a in argv if a != "--gpu"])
