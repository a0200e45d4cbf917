"""A loss family that lives outside the package, as a user's own would: the proof that a new family
is one module plus one YAML (`tests/conf/loss/logit_mse.yaml`, found through `hydra.searchpath`),
with nothing under `src/` or `conf/` changed for it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsuite.losses.base import DistillationLoss, LossContext, check_weight
from kdsuite.losses.teacher_reads import TeacherReads


class LogitMSELoss(DistillationLoss):
    """Logit regression (Ba and Caruana, 2014): `L = (1 - alpha) * CE(z_S, y) + alpha * MSE(z_S, z_T)`,
    the MSE summed over classes and averaged over examples. It reads only the teacher's logits, so it
    declares them and runs with `teacher.outputs=cached` too."""

    name = "logit_mse"

    def __init__(self, context: LossContext, alpha: float = 0.5):
        super().__init__(context)
        check_weight("alpha", alpha)
        self.alpha = alpha

    def cached_teacher_reads(self, top_k: int | None = None) -> TeacherReads:
        return TeacherReads()

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        ce = self.task_loss(student_out.logits, batch["labels"])
        mse = F.mse_loss(student_out.logits.float(), teacher_out.logits.float(), reduction="none").sum(-1).mean()
        return {"ce": ce, "logit_mse": mse, "loss": (1 - self.alpha) * ce + self.alpha * mse}
