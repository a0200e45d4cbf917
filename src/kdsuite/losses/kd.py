"""`kd`: vanilla knowledge distillation on the logits (Hinton, Vinyals and Dean, 2015).

Causal LMs: the soft term is per response token over the vocabulary, `divergence` chooses it
(`forward_kl` Hinton's, `reverse_kl` MiniLLM's direction, `skew_kl` DistiLLM's
`KL(p || a*p + (1-a)*q)` and `skew_reverse_kl` its `KL(q || a*q + (1-a)*p)` with `a = skew`,
`jsd` GKD's generalized Jensen-Shannon divergence with `beta`, beta = 0 / 1 being forward / reverse
KL as in TRL), computed in fp32 in chunks of `chunk_size` tokens (`losses/tokens.py`, where the
equations and the choice at JSD's ends are written out). The spec runs it at `T = 1`: the causal presets set
`loss.temperature=1`.
The CE side is the response-token SFT loss; both are means over response tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsuite.losses.base import (
    DistillationLoss,
    LossContext,
    check_choice,
    check_temperature,
    check_weight,
    task_loss,
)
from kdsuite.losses.teacher_reads import TeacherReads, check_top_k
from kdsuite.losses.tokens import DIVERGENCES, causal_kd, response_token_ce


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


def causal_kd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    divergence: str = "forward_kl",
    skew: float = 0.1,
    chunk_size: int = 256,
    beta: float = 0.5,
) -> dict[str, torch.Tensor]:
    """`L = (1 - alpha) * CE_response + alpha * T^2 * mean_tokens D(p_T, p_S)` for causal LMs."""
    ce = response_token_ce(student_logits, labels)
    kd = causal_kd(student_logits, teacher_logits, labels, divergence, temperature, skew, chunk_size, beta)
    return {"ce": ce, "kd": kd, "loss": (1.0 - alpha) * ce + alpha * kd}


def check_divergence(divergence: str, skew: float, beta: float = 0.5) -> None:
    check_choice("divergence", divergence, DIVERGENCES)
    if not 0.0 < skew < 1.0:
        raise ValueError(f"loss.skew={skew} must lie in (0, 1)")
    check_weight("beta", beta)


class KDLoss(DistillationLoss):
    """Hinton KD. Defaults `alpha = 0.5`, `T = 2` (CoDIR's GLUE script); see `kd_terms`.

    `divergence`, `skew`, `beta` and `chunk_size` apply to causal LMs (see the module docstring); on
    classifiers only `forward_kl` (Hinton's) is defined and anything else is refused. `fdd` and
    `codir` extend this class: their L_KD is this loss's total, with the same settings and checks.
    """

    name = "kd"

    def __init__(
        self,
        context: LossContext,
        alpha: float = 0.5,
        temperature: float = 2.0,
        divergence: str = "forward_kl",
        skew: float = 0.1,
        chunk_size: int = 256,
        beta: float = 0.5,
    ):
        super().__init__(context)
        # the loss math that differs by track: on causal LMs, means over response tokens of a chosen
        # divergence between next-token distributions (`causal_kd_terms`); on classifiers, Hinton's KD
        # on one logit vector per example (`kd_terms`)
        self.token_level = context.task.is_causal_lm
        check_weight("alpha", alpha)
        check_temperature(temperature)
        check_divergence(divergence, skew, beta)
        if divergence != "forward_kl" and not self.token_level:
            raise ValueError(
                f"loss.divergence={divergence!r} is defined for causal LMs; task "
                f"{context.task.name!r} trains classifiers, which use forward_kl"
            )
        self.alpha = alpha
        self.temperature = temperature
        self.divergence, self.skew, self.chunk_size, self.beta = divergence, skew, chunk_size, beta

    def cached_teacher_reads(self, top_k: int | None = None) -> TeacherReads:
        """Classifiers: the logits. Causal LMs: per response token the top `teacher.cache_top_k`
        log-probabilities at this loss's temperature, plus the tail's mass (`losses/tokens.py`)."""
        if self.token_level:
            return TeacherReads(logits=False, top_k=check_top_k(top_k), temperature=float(self.temperature))
        return TeacherReads()

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        if self.token_level:
            return causal_kd_terms(
                student_out.logits, teacher_out.logits, batch["labels"], self.alpha, self.temperature,
                self.divergence, self.skew, self.chunk_size, self.beta,
            )
        return kd_terms(
            student_out.logits,
            teacher_out.logits,
            batch["labels"],
            self.alpha,
            self.temperature,
            self.is_regression,
        )
