"""`kd`: vanilla knowledge distillation on the logits (Hinton, Vinyals and Dean, 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsuite.losses.base import DistillationLoss, LossContext, check_temperature, check_weight
from kdsuite.losses.ce import task_loss


def soft_label_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """`T^2 * KL(softmax(z_T / T) || softmax(z_S / T))`, summed over classes, mean over examples.

    The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al.).
    """
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, C)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none")
    return temperature**2 * kl.sum(dim=-1).mean()


def kd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    is_regression: bool,
) -> dict[str, torch.Tensor]:
    """`L = (1 - alpha) * CE(z_S, y) + alpha * T^2 * KL(p_T || p_S)`, with p = softmax(z / T).

    Regression: `MSE(z_S, z_T)` replaces `T^2 * KL` and T is unused (a temperature has no
    meaning for a single real output). Returns the unweighted terms `ce` and `kd` (the latter
    including T^2) and their weighted total `loss`.
    """
    ce = task_loss(student_logits, labels, is_regression)
    if is_regression:
        kd = F.mse_loss(student_logits.float(), teacher_logits.float())
    else:
        kd = soft_label_kl(student_logits, teacher_logits, temperature)
    return {"ce": ce, "kd": kd, "loss": (1.0 - alpha) * ce + alpha * kd}


class KDLoss(DistillationLoss):
    """Hinton KD. Defaults `alpha = 0.5`, `T = 2` (CoDIR's GLUE script); see `kd_terms`."""

    name = "kd"

    def __init__(self, context: LossContext, alpha: float = 0.5, temperature: float = 2.0):
        super().__init__(context)
        check_weight("alpha", alpha)
        check_temperature(temperature)
        self.alpha = alpha
        self.temperature = temperature

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        return kd_terms(
            student_out.logits,
            teacher_out.logits,
            batch["labels"],
            self.alpha,
            self.temperature,
            self.is_regression,
        )
