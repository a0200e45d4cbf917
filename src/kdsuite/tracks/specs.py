"""What a task of each track states: where its data lives and how it is scored. The tasks
themselves are listed once, in their track's module (`classification.GLUE_TASKS`,
`instruction.INSTRUCTION_TASKS`); the run settings (lengths, sample counts, where the files are)
are the dataset config's (`conf/dataset/`).

Kept apart from the tracks so that the data readers can name these types without importing the
tracks, which call them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from kdsuite.tracks.base import Track


@dataclass(frozen=True)
class ClassificationTask:
    """How to read and score one GLUE task.

    Column indices refer to GLUE's own TSV layout (see shared/data/glue/README.md); `label_names`
    maps the TSV's label strings to class ids (empty for numeric labels), and `num_labels == 1`
    means a regression head trained with MSE.
    """

    name: str
    glue_dir: str  # folder name in GLUE's download layout, e.g. "RTE"
    hub_config: str  # config name of the `nyu-mll/glue` hub dataset
    text_a_column: int
    text_b_column: int | None
    label_column: int
    has_header: bool
    num_labels: int
    metrics: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...] = field(default=())
    hub_text_fields: tuple[str, ...] = ("sentence1", "sentence2")
    track: Track | None = field(default=None, compare=False, repr=False)

    is_causal_lm: ClassVar[bool] = False  # for the loss math that differs (kd's token-level terms)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


@dataclass(frozen=True)
class InstructionTask:
    """An instruction-following task for decoder LMs (the FDD paper's setting).

    Training is next-token prediction on the response tokens; the run's objective is ROUGE-L of
    sampled responses against the references (`kdsuite.generation`).
    """

    name: str
    hub_dataset: str | None  # used when `dataset.path` is null
    reader: str = "dolly"  # dolly: Dolly-format JSONL or hub (instructions.py); sharegpt: sharegpt.py
    metrics: tuple[str, ...] = ("rougeL",)
    main_metric: str = "rougeL"
    track: Track | None = field(default=None, compare=False, repr=False)

    is_causal_lm: ClassVar[bool] = True  # for the loss math that differs (kd's token-level terms)
    is_regression: ClassVar[bool] = False
