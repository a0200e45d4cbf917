"""Loss families. Each is one module here plus one YAML in conf/loss/ whose `_target_` names the
class; `_partial_: true` lets the run supply the `LossContext` (model widths, layer pairs, task)."""

from kdsuite.losses.base import DistillationLoss, LossContext

__all__ = ["DistillationLoss", "LossContext"]
