"""Losses that fail on purpose, selected by `_target_` like any other (for failure-path tests)."""

import torch

from kdsuite.losses.kd import KDLoss


class NaNLoss(KDLoss):
    """KD whose total turns NaN: the run must stop and be marked FAILED."""

    name = "nan"

    def forward(self, student_out, teacher_out, batch):
        terms = super().forward(student_out, teacher_out, batch)
        return {**terms, "loss": terms["loss"] * torch.tensor(float("nan"))}
