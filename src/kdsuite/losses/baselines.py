"""Checks shared by the encoder baselines of the seed papers (pkd, tinybert, minilm, distilbert)."""

from __future__ import annotations

from kdsuite.losses.base import LossContext, require_track


def refuse_causal_lm(loss_name: str, context: LossContext) -> None:
    """The baselines distil BERT-style sequence classifiers; a causal-LM task is refused by name."""
    require_track(context, "classification",
                  f"loss={loss_name} distils BERT-style sequence classifiers (encoder blocks, a [CLS] head); task "
                  "{task!r} trains causal LMs: use loss=ce, kd or fdd there")


def check_nonnegative(**weights: float) -> None:
    """Each `loss.<name>` weight must be >= 0."""
    for name, value in weights.items():
        if value < 0:
            raise ValueError(f"loss.{name}={value} must be >= 0")

