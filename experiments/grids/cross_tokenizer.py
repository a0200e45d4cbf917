"""Issue 34's real pair: distillation across tokenizers on ShareGPT, at the CPU budget.

    python experiments/grids/cross_tokenizer.py --commit                  # runs what is missing (resumes)
    python experiments/grids/cross_tokenizer.py --table-only              # rebuild record and table

Teacher SmolLM2-135M-Instruct (GGUF, as it comes; byte-level BPE, 49,152) -> `smollm2_l6_wordpiece`:
smollm2_l6's shape with random weights over MiniLM's WordPiece (30,522), its own chat template
(`student.chat_template`), on ShareGPT first turns at `experiment=causal_real` sizes. Rows: `ce`
(the same student without a teacher), `uld_position` (the original ULD), `uld_offsets` (alignment
by text) and `uld_hybrid` (GOLD's hybrid, offsets), and `kd_same_tokenizer`, SmolLM2 -> its
6-block copy with forward KL: the same-tokenizer step whose cost the uld rows are set against (its
validation CE is another student's and ranks nothing here).

The record adds loss=uld's alignment coverage (`train/align_coverage`: the fraction of response
characters inside aligned groups, from the data; `train/aligned_frac`: of the student's response
tokens) as a mean over each run's logging windows. The hybrid's vocabulary map (size and coverage)
is a property of the pair, computed here from the two tokenizers and written under the tables.
"""

from __future__ import annotations

import sys

from kdsuite.reports.causal_grid import CausalGrid, main

STUDENT = "smollm2_l6_wordpiece"
VARIANTS = {
    "ce": [f"student={STUDENT}", "loss=ce"],
    "uld_position": [f"student={STUDENT}", "loss=uld", "loss.alignment=position"],
    "uld_offsets": [f"student={STUDENT}", "loss=uld", "loss.alignment=offsets"],
    "uld_hybrid": [f"student={STUDENT}", "loss=uld", "loss.alignment=offsets", "loss.hybrid=true"],
    "kd_same_tokenizer": ["student=smollm2_l6", "loss=kd", "loss.divergence=forward_kl"],
}
STEPS = ["trainer.max_steps=24"]  # one pass over the 96 training pairs (the preset's); see the results file

NOTES = """What this table can and cannot show: the student starts from random weights over another
vocabulary, so after a CPU budget its samples are noise and ROUGE-L ranks nothing; validation CE (the
student's own response tokens, in its own vocabulary) says how far each row got, and is comparable
between the WordPiece rows only (kd_same_tokenizer's is a block copy of the teacher in the teacher's
vocabulary). No pretrained offline student with another tokenizer exists here, so the real pair shows
that the cross-tokenizer path works and what it costs, not a ranking of the losses."""


def vocabulary_map_text() -> str:
    """The hybrid's exact-match map of this pair (`vocab_map`), as a sentence."""
    from hydra import compose, initialize_config_dir

    from kdsuite import models
    from kdsuite.data import instructions
    from kdsuite.losses.vocab_map import vocab_map
    from kdsuite.reports.causal_grid import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=causal_real", f"student={STUDENT}"])
    teacher = instructions.prepare_tokenizer(models.load_tokenizer(cfg.teacher))
    student = instructions.prepare_tokenizer(models.load_student_tokenizer(cfg.student))
    return f"Hybrid (`loss.hybrid=true`): {vocab_map(student, teacher).summary()}."


def grid(with_map: bool = True) -> CausalGrid:
    notes = NOTES + ("\n\n" + vocabulary_map_text() if with_map else "")
    return CausalGrid(name="cross_tokenizer", preset="causal_real", dataset="sharegpt", student=STUDENT,
                      variants=VARIANTS, overrides=STEPS, reference="ce", notes=notes,
                      extra_metrics=["train/align_coverage", "train/aligned_frac"],
                      other_students=["smollm2_l6"])


if __name__ == "__main__":
    main(grid(), sys.argv[1:])
