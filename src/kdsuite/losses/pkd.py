"""`pkd`: patient knowledge distillation (Sun, Cheng, Gan and Liu, EMNLP 2019).

    L = (1 - alpha) * L_CE + alpha * L_DS + beta * L_PT
    L_DS = (T^2 / C) * KL(softmax(z_T / T) || softmax(z_S / T))     (C classes)
    L_PT = sum_j || h_S(s_j) / ||h_S(s_j)||_2 - h_T(t_j) / ||h_T(t_j)||_2 ||_2^2

h(l) is the output of block l at the first token ([CLS]); (s_j, t_j) are the patient pairs. The
terms are `kd`'s with the soft term divided by C (`PKDLoss` extends `KDLoss`: same `alpha`,
`temperature` and checks).

Scale of L_DS: the official `distillation_loss` (src/KD_loss.py) is
`nn.KLDivLoss(reduction='mean')(log_softmax(z_S / T), softmax(z_T / T)) * T * T`; reduction
'mean' averages over all B * C elements, so its L_DS is `kd`'s per-example sum over classes
divided by C. The paper's alpha and beta were tuned against that scale (with `kd`'s sum, beta
500 would weigh the patient term C times less against L_DS than in the paper), so this loss
follows the official reduction: the logged `kd` term is (T^2 / C) * mean_b KL.

Patient pairs: the layer mapping without any pair that holds the teacher's top block. The
teacher's last layer speaks through its logits, which L_DS already matches, so the paper never
pairs it: PKD-Skip is `mapping=skip` (12 -> 6: teacher blocks 2, 4, 6, 8, 10) and PKD-Last is
`mapping=last` (7..11); the default `uniform` mapping includes (L_S, L_T), which is dropped here.
The pairs used are `pairs_used` (and `layer_pairs`): known at construction when the context
gives the teacher's architecture, else when the models are bound. The run's `layer_pairs` MLflow
tag is the mapping's until the run records `pairs_used` there.

Scale of beta: the official code (intersun/PKD-for-BERT-Model-Compression, src/KD_loss.py,
`patience_loss`) stacks the normalised vectors to (B, K, d) and takes `F.mse_loss`, the mean over
examples, pairs and the d hidden units, so

    L_PT (as computed) = mean_b mean_j (1 / d) || ... ||_2^2

which is 1 / (K d) of the paper's sum over pairs. The paper's beta (its GLUE preset: 500, with
alpha 0.7 and T 10, src/argument_parser.py `kd.cls`) is tuned for that reduction, and this loss
keeps it so the published settings carry over.

Choices where paper or code are silent or differ:
- L_DS divides by C as the official code does (above), so `loss=pkd loss.beta=0` is `loss=kd`
  with its soft term scaled by 1 / C, not `loss=kd` itself.
- Regression (STS-B): L_CE is the MSE on labels and L_DS the MSE between logits, as in `kd`
  (one output, C = 1: the division changes nothing).
- `normalize: false` drops the L2 normalisation (the official `normalize_patience=False`); the
  paper's equation and its GLUE preset normalise.
- Student and teacher must have the same width (the paper's students are BERT_base's width);
  different widths are refused rather than projected, as PKD has no projection.
- No patient pair left (a 1-block student under `uniform`) with beta > 0 is refused.
- `teacher.outputs=cached` stores the logits and the first token of the patient layers
  (`cached_teacher_reads`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsuite.losses.base import LossContext
from kdsuite.losses.baselines import check_nonnegative, refuse_causal_lm
from kdsuite.losses.kd import KDLoss
from kdsuite.losses.teacher_reads import TeacherReads
from kdsuite.mapping import LayerPairs


def patient_pairs(layer_pairs: LayerPairs, teacher_layers: int) -> LayerPairs:
    """The mapping's pairs without those holding the teacher's top block `teacher_layers`."""
    return [(s, t) for s, t in layer_pairs if t != teacher_layers]


def patience_term(
    student_cls: list[torch.Tensor], teacher_cls: list[torch.Tensor], normalize: bool = True
) -> torch.Tensor:
    """`mean_b mean_j mean_d (h_S(s_j)/||h_S(s_j)|| - h_T(t_j)/||h_T(t_j)||)^2` on K x (B, d) [CLS]
    vectors (the official `F.mse_loss` reduction; see the module docstring)."""
    student = torch.stack([h.float() for h in student_cls], dim=1)  # (B, K, d)
    teacher = torch.stack([h.float() for h in teacher_cls], dim=1)  # (B, K, d)
    if normalize:
        student, teacher = F.normalize(student, p=2, dim=-1), F.normalize(teacher, p=2, dim=-1)
    return F.mse_loss(student, teacher)


class PKDLoss(KDLoss):
    """Patient KD; see the module docstring for the equations, the pairs and the scale of beta.

    Defaults: the official GLUE preset `kd.cls` (alpha 0.7, T 10, beta 500, normalised).
    """

    name = "pkd"
    needs_hidden_states = True

    def __init__(
        self,
        context: LossContext,
        alpha: float = 0.7,
        temperature: float = 10.0,
        beta: float = 500.0,
        normalize: bool = True,
    ):
        refuse_causal_lm(self.name, context)
        super().__init__(context, alpha, temperature)
        check_nonnegative(beta=beta)
        if context.student_hidden_size != context.teacher_hidden_size:
            raise ValueError(
                f"loss=pkd compares normalised [CLS] states of equal width; the student's width "
                f"{context.student_hidden_size} differs from the teacher's {context.teacher_hidden_size}: "
                f"use a student of the teacher's width (student.config_overrides) or loss=fdd/tinybert"
            )
        self.beta, self.normalize = beta, normalize
        self.mapped_pairs: LayerPairs = list(context.layer_pairs)
        self.pairs_used: LayerPairs | None = None
        if context.teacher_architecture is not None:
            self._use_pairs(int(context.teacher_architecture.num_hidden_layers))

    def _use_pairs(self, teacher_layers: int) -> None:
        pairs = patient_pairs(self.mapped_pairs, teacher_layers)
        if not pairs and self.beta > 0:
            raise ValueError(
                f"loss=pkd: the mapping's pairs {self.mapped_pairs} all hold the teacher's top block "
                f"{teacher_layers}, which PKD never pairs, so no patient pair is left for loss.beta={self.beta}: "
                f"use mapping=skip or mapping=last, a deeper student, or loss.beta=0"
            )
        self.pairs_used = self.layer_pairs = pairs

    def cached_teacher_reads(self, top_k: int | None = None) -> TeacherReads:
        """The logits and the first token of the patient pairs' teacher layers (all the mapped
        pairs' layers while the teacher's depth is not known yet: a superset of the ones used)."""
        pairs = self.mapped_pairs if self.pairs_used is None else self.pairs_used
        return TeacherReads(hidden_layers=tuple(sorted({t for _, t in pairs})), tokens="cls")

    def bind_models(self, student, teacher) -> None:
        if self.pairs_used is None:  # the context had no teacher architecture: read the model's
            self._use_pairs(int(teacher.config.num_hidden_layers))

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        terms = super().forward(student_out, teacher_out, batch)
        classes = student_out.logits.shape[-1]  # (B, C): the official KLDivLoss 'mean' divides by B * C
        soft = terms["kd"] / classes
        terms = {**terms, "kd": soft, "loss": (1.0 - self.alpha) * terms["ce"] + self.alpha * soft}
        if not self.pairs_used:
            patience = terms["loss"].new_zeros(())
        else:
            student_cls = [student_out.hidden_states[s][:, 0] for s, _ in self.pairs_used]  # K x (B, d)
            teacher_cls = [teacher_out.hidden_states[t][:, 0] for _, t in self.pairs_used]  # K x (B, d)
            patience = patience_term(student_cls, teacher_cls, self.normalize)
        return {**terms, "pt": patience, "loss": terms["loss"] + self.beta * patience}
