"""`ce`: the student trained alone on gold labels, the baseline every method is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsuite.losses.base import DistillationLoss

IGNORE_INDEX = -100


def task_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """Cross-entropy on class labels, or MSE on the single output for regression (STS-B).

    Both are means over the examples of the batch; class labels equal to -100 are ignored.
    """
    if is_regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())  # (B,) vs (B,)
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX)


class CELoss(DistillationLoss):
    """`L = CE(z_S, y)` (MSE for regression). Needs no teacher forward."""

    name = "ce"
    needs_teacher = False

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        ce = task_loss(student_out.logits, batch["labels"], self.is_regression)
        return {"ce": ce, "loss": ce}
