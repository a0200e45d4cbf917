"""What a track is: the interface the run, the models, the losses and the caches call, so that no
module outside `kdsuite.tracks` asks which track a task is on.

A track owns, for its tasks: the dataset settings it checks before any work, how its data is read,
checked, digested and tokenised, which model class and task head it trains, its task loss, how
its dev set is scored (logits, or sampled responses), what of the dataset config names its
fine-tuned teacher, and which rollout sources and tokenizer pairs it accepts.

Imports here and in the track modules are light (no torch, datasets or transformers at the top):
`kdsuite.config_checks` looks tasks up in the sweep's own process, which stays free of the
training stack. The track methods import what they drive when they are called.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from omegaconf import DictConfig

# Label of a position no loss counts (the prompt and padding of instruction examples); the value
# PyTorch's cross-entropy and Hugging Face's collators ignore.
IGNORE_INDEX = -100


class Track(ABC):
    """One kind of task: its data, models, task loss, evaluation and teacher-cache key."""

    name: ClassVar[str]  # the value of `dataset.track` that selects it
    # the settings `dataset.<key>` that cut examples, each with the fewest tokens it may be
    length_settings: ClassVar[dict[str, int]]
    lengths_required: ClassVar[bool]  # every length setting must be given (else: checked where given)
    scores_logits: ClassVar[bool]  # evaluation gathers the dev set's logits (else the task loss alone)
    pipeline_task: ClassVar[str]  # the MLflow/transformers pipeline task of a logged student
    lora_task_type: ClassVar[str]  # the name of peft's `TaskType` for LoRA students

    def __init__(self, tasks: dict[str, Any] | None = None):
        self.tasks = tasks or {}

    def task(self, name: str):
        """The spec of this track's task `name`, or a ValueError naming the tasks it has."""
        try:
            return self.tasks[name]
        except KeyError:
            raise ValueError(
                f"unknown task {name!r} on track {self.name!r}: dataset.name must be one of {sorted(self.tasks)}"
            ) from None

    # data
    @abstractmethod
    def check_data(self, cfg: DictConfig, task) -> None:
        """The data the run reads is there and its settings name real splits; raises before any work."""

    @abstractmethod
    def data_digests(self, cfg: DictConfig, task) -> dict[str, str]:
        """sha256 per part of the rows a run uses (`kdsuite.data.run_data.data_digests`)."""

    @abstractmethod
    def load_data(self, cfg: DictConfig, task, tokenizer, teacher_tokenizer=None):
        """The run's `RunData`, in the student's tokenization and the teacher's where it differs."""

    @abstractmethod
    def load_tokenizers(self, cfg: DictConfig, task, teacher_architecture) -> tuple[Any, Any]:
        """(the student's tokenizer, the teacher's), after the checks this track makes of the pair."""

    # models
    @abstractmethod
    def model_class(self):
        """The transformers Auto class this track's teachers and students are."""

    @abstractmethod
    def with_task_head(self, config, task):
        """`config` with the task's head (number of labels, problem type), or as it is."""

    @abstractmethod
    def pretrained_student(self, location: str, task, teacher_architecture):
        """A student read from checkpoint `location` for `task`, checked against the teacher's
        architecture where this track needs them to agree."""

    # losses and evaluation
    @abstractmethod
    def task_loss(self, logits, labels, is_regression: bool):
        """The student's own loss on gold labels."""

    @abstractmethod
    def check_rollout_source(self, task, source: str) -> None:
        """Refuses a `rollout.source` other than `dataset` where this track has nothing to generate."""

    # caches
    @abstractmethod
    def teacher_cache_dataset(self, dataset: DictConfig, digests: dict[str, str]) -> dict:
        """The dataset's part of a fine-tuned teacher's cache key (`kdsuite.teacher.cache`)."""

    @abstractmethod
    def teacher_scoring(self, dataset: DictConfig, digests: dict[str, str]) -> dict:
        """The settings and rows the teacher's dev scores depend on that its cache key leaves out
        (empty when the key holds them all): a cached teacher is scored again under new ones."""

    @abstractmethod
    def data_source(self, settings: DictConfig, task, part: str):
        """The MLflow dataset source a split was read from."""
