"""`distilbert`: DistilBERT's distillation objective (Sanh, Debut, Chaumond and Wolf, 2019) applied
to a task, as the transformers distillation example (`examples/research_projects/distillation`,
`distiller.py`) computes its terms:

    L = alpha_ce * L_ce + alpha_task * L_task + alpha_cos * L_cos
    L_ce   = T^2 * KL(softmax(z_T / T) || softmax(z_S / T))     (distiller's `loss_ce`: KLDivLoss
                                                                 'batchmean' of the tempered
                                                                 distributions, times T^2)
    L_task = CE(z_S, y)                                          (MSE for regression)
    L_cos  = mean over the batch's non-padding tokens of 1 - cos(h_S, h_T)
                                                                 (last hidden states; distiller's
                                                                 CosineEmbeddingLoss with target 1)

Pre-training's masked-LM term (`alpha_mlm`) and causal-LM term (`alpha_clm`) do not apply to a
sequence classifier: the gold-label task loss takes their place.

Defaults, and where each comes from. The example has two settings: the pre-training run (its
README's `train.py` command: T 2, alpha_ce 5, alpha_mlm 2, alpha_cos 1) and the task-level
distillation of an already fine-tuned teacher (`run_squad_w_distillation.py`: T 2, alpha_ce 0.5,
alpha_squad 0.5, and no cosine term). kdsuite distils a fine-tuned teacher on a task, the second
setting, so:
- T = 2: both settings.
- alpha_ce = 0.5, alpha_task = 0.5: `run_squad_w_distillation.py`'s `--alpha_ce` and
  `--alpha_squad`. They were the pre-training run's 5 and 2 before, weights chosen beside a
  masked-LM term rather than a task loss.
- alpha_cos = 1: the pre-training command's `--alpha_cos`. The task-level script has no cosine
  term, so this weight has no task-level source; it is kept because the family is asked to carry
  DistilBERT's cosine term. `loss.alpha_cos=0` gives the task-level script's objective exactly;
  `loss.alpha_ce=5 loss.alpha_task=2` gives the pre-training run's weights.
The weights are not mixing weights: any value >= 0.

Choices:
- The soft term is logged as `kd` (the suite's name for the tempered KL, `ce` being the task loss).
- Regression (STS-B): the soft term is the MSE between the logits (no temperature), as in `kd`.
- Widths must be equal (cosine between the two models' states; DistilBERT keeps BERT's width);
  different widths are refused.
- `teacher.outputs=cached` stores the logits and the teacher's last hidden states, once the run
  gives the loss the teacher's depth (`LossContext.teacher_architecture`); until then it refuses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsuite.losses.base import DistillationLoss, LossContext, check_temperature
from kdsuite.losses.baselines import check_nonnegative, refuse_causal_lm
from kdsuite.losses.kd import soft_label_kl
from kdsuite.losses.teacher_reads import TeacherReads, not_cacheable


def cosine_term(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`mean_{tokens} 1 - cos(h_S, h_T)` over the non-padding tokens of the whole batch: (B, L, d) x2, mask (B, L)."""
    keep = mask.bool()  # (B, L)
    cosine = F.cosine_similarity(student_hidden.float()[keep], teacher_hidden.float()[keep], dim=-1)  # (N,)
    return (1.0 - cosine).mean()


class DistilBERTLoss(DistillationLoss):
    """DistilBERT's soft-target, task and cosine terms; see the module docstring."""

    name = "distilbert"
    needs_hidden_states = True

    def __init__(
        self,
        context: LossContext,
        temperature: float = 2.0,
        alpha_ce: float = 0.5,
        alpha_task: float = 0.5,
        alpha_cos: float = 1.0,
    ):
        refuse_causal_lm(self.name, context)
        super().__init__(context)
        check_temperature(temperature)
        check_nonnegative(alpha_ce=alpha_ce, alpha_task=alpha_task, alpha_cos=alpha_cos)
        if context.student_hidden_size != context.teacher_hidden_size:
            raise ValueError(
                f"loss=distilbert takes the cosine between the last hidden states, which needs equal widths; "
                f"the student's is {context.student_hidden_size}, the teacher's {context.teacher_hidden_size}"
            )
        self.temperature = temperature
        self.alpha_ce, self.alpha_task, self.alpha_cos = alpha_ce, alpha_task, alpha_cos
        self.pairs_used = None  # (last, last): the depths are known once the models are
        if context.student_architecture is not None and context.teacher_architecture is not None:
            self.pairs_used = [(context.student_architecture.num_hidden_layers,
                                context.teacher_architecture.num_hidden_layers)]

    def cached_teacher_reads(self, top_k: int | None = None) -> TeacherReads:
        """The logits and the teacher's last hidden states at every real token; the last layer's
        index is the teacher's depth, known when the run gives the loss the teacher's architecture."""
        if self.pairs_used is None:
            raise not_cacheable(self.name, "reads the teacher's last hidden states, whose layer index this run "
                                           "does not give the loss before the teacher is loaded "
                                           "(LossContext.teacher_architecture)")
        return TeacherReads(hidden_layers=(self.pairs_used[0][1],), tokens="all")

    def bind_models(self, student, teacher) -> None:
        self.pairs_used = [(student.config.num_hidden_layers, teacher.config.num_hidden_layers)]

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        if self.is_regression:
            soft = F.mse_loss(student_out.logits.float(), teacher_out.logits.float())
        else:
            soft = soft_label_kl(student_out.logits, teacher_out.logits, self.temperature)
        task = self.task_loss(student_out.logits, batch["labels"])
        student_layer, teacher_layer = self.pairs_used[0] if self.pairs_used else (-1, -1)
        cos = cosine_term(student_out.hidden_states[student_layer], teacher_out.hidden_states[teacher_layer],
                          batch["attention_mask"])
        total = self.alpha_ce * soft + self.alpha_task * task + self.alpha_cos * cos
        return {"kd": soft, "ce": task, "cos": cos, "loss": total}
