"""What every loss family shares: the context a run gives it, the call signature and the task loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdsuite.losses.teacher_reads import TeacherReads, not_cacheable
from kdsuite.losses.tokens import IGNORE_INDEX
from kdsuite.mapping import LayerPairs
from kdsuite.tracks.specs import ClassificationTask, InstructionTask

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def task_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """Cross-entropy on class labels, or MSE on the single output for regression (STS-B).

    Both are means over the examples of the batch; class labels equal to -100 are ignored.
    """
    if is_regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())  # (B,) vs (B,)
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX)


@dataclass(frozen=True)
class LossContext:
    """What a run knows before training that a loss may need to build itself.

    Only the task is always known: `LossContext(task)` is the whole context of a loss that reads
    nothing else (the teacher's own fine-tune with `ce`). A distillation run also gives the layer
    pairs, both models' widths and `train_labels`, where `train_labels[i]` is the label of the
    training example whose `example_index` is i (empty for causal-LM tasks, whose labels are
    token sequences), and the run's `seed` (for what a loss draws itself). `student_architecture`
    and `teacher_architecture` are the models' configs (depth, heads), None where not given.
    `training_batches` is the number of training micro-batches each process will give the loss
    (`run.assembly.training_batches`), None before the data is read.
    """

    task: ClassificationTask | InstructionTask
    layer_pairs: LayerPairs = ()
    student_hidden_size: int | None = None
    teacher_hidden_size: int | None = None
    train_labels: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    seed: int = 0
    labels_are_placeholders: bool = False
    student_architecture: PretrainedConfig | None = None
    teacher_architecture: PretrainedConfig | None = None
    tokenizers: tuple = ()  # instruction track: (student's, teacher's) when they differ (loss=uld)
    training_batches: int | None = None


class DistillationLoss(nn.Module):
    """Base of all loss families: `(student_out, teacher_out, batch) -> {term: tensor, "loss": total}`.

    `student_out`/`teacher_out` are Hugging Face model outputs (`logits`, and `hidden_states`
    when `needs_hidden_states`); `teacher_out` is None when `needs_teacher` is false, and the
    Trainer then skips the teacher forward entirely. `batch` holds `labels`, `attention_mask`
    and `example_index`. Terms are per-example means (per response token on the causal-LM track,
    where `labels` are token ids with -100 on the prompt); the Trainer logs each one separately.
    Learned parts (projections, heads, memory banks) live on the module and train and save with
    the student.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    needs_hidden_states: ClassVar[bool] = False
    needs_increasing_pairs: ClassVar[bool] = False

    def __init__(self, context: LossContext):
        super().__init__()
        self.is_regression = context.task.is_regression
        self.track = context.task.track

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The student's own loss on gold labels, as the task's track defines it: CE, MSE
        (regression) or response-token CE."""
        return self.track.task_loss(logits, labels, self.is_regression)

    def bind_models(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Called once before training, for losses that use the models' own modules (heads).

        Keep plain references only: the loss is a submodule of the student, so registering the
        student as a submodule of the loss would make a cycle.
        """

    def cached_teacher_reads(self, top_k: int | None = None) -> TeacherReads:
        """What this loss reads from the teacher, for `teacher.outputs=cached` (`top_k`:
        `teacher.cache_top_k`, for losses over a vocabulary). A loss whose reads the store can hold
        overrides this; by default it cannot, and says so naming itself."""
        raise not_cacheable(self.name, "reads teacher outputs that the store does not hold (the loss declares "
                                       "none it could serve)")

    def teacher_layers(self) -> tuple[int, ...]:
        """The teacher layers of the loss's layer pairs, in order (none without pairs)."""
        return tuple(sorted({t for _, t in getattr(self, "layer_pairs", ())}))

    def forward(self, student_out: Any, teacher_out: Any, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def require_track(context: LossContext, track: str, refusal: str) -> None:
    """A loss defined on one track refuses a task of another, saying why: `refusal` is formatted
    with the task's name (`{task!r}`)."""
    if context.task.track.name != track:
        raise ValueError(refusal.format(task=context.task.name))


def check_choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"loss.{option}={value!r} is not one of {list(allowed)}")


def check_weight(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"loss.{name}={value} must lie in [0, 1]")


def check_temperature(value: float) -> None:
    if value <= 0:
        raise ValueError(f"loss.temperature={value} must be > 0")
