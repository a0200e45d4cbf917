"""`ce`: the student trained alone on gold labels, the baseline every method is compared with."""

from __future__ import annotations

import torch

from kdsuite.losses.base import DistillationLoss, task_loss  # noqa: F401  (task_loss: re-exported)


class CELoss(DistillationLoss):
    """`L = CE(z_S, y)` (MSE for regression, response-token CE for causal LMs: SFT). Needs no
    teacher forward."""

    name = "ce"
    needs_teacher = False

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        ce = self.task_loss(student_out.logits, batch["labels"])
        return {"ce": ce, "loss": ce}
