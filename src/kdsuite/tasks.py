"""Task definitions: where each task's data lives and how it is scored.

One `TaskSpec` per GLUE task is the single source of truth used by data loading (which TSV columns
hold the text and the label), model building (number of labels, regression or not) and
evaluation (which metrics, and which one is the run's objective). Instruction-following tasks of
the causal-LM track are `CausalTaskSpec`s: a language-modelling head, response-token losses and
ROUGE-L on sampled responses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Label of a position no loss counts (the prompt and padding of causal-LM examples); the value
# PyTorch's cross-entropy and Hugging Face's collators ignore.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TaskSpec:
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

    is_causal_lm = False

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


@dataclass(frozen=True)
class CausalTaskSpec:
    """An instruction-following task for decoder LMs (the FDD paper's setting).

    Training is next-token prediction on the response tokens; the run's objective is ROUGE-L of
    sampled responses against the references (`kdsuite.generation`).
    """

    name: str
    hub_dataset: str | None  # used when `dataset.path` is null
    reader: str = "dolly"  # dolly: Dolly-format JSONL or hub (instructions.py); sharegpt: sharegpt.py
    metrics: tuple[str, ...] = ("rougeL",)
    main_metric: str = "rougeL"
    is_causal_lm = True
    is_regression = False


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        name="sst2", glue_dir="SST-2", hub_config="sst2",
        text_a_column=0, text_b_column=None, label_column=1, has_header=True,
        num_labels=2, metrics=("accuracy",), main_metric="accuracy",
        hub_text_fields=("sentence",),
    ),
    "mrpc": TaskSpec(
        name="mrpc", glue_dir="MRPC", hub_config="mrpc",
        text_a_column=3, text_b_column=4, label_column=0, has_header=True,
        num_labels=2, metrics=("accuracy", "f1"), main_metric="f1",
    ),
    "rte": TaskSpec(
        name="rte", glue_dir="RTE", hub_config="rte",
        text_a_column=1, text_b_column=2, label_column=3, has_header=True,
        num_labels=2, metrics=("accuracy",), main_metric="accuracy",
        label_names=("entailment", "not_entailment"),
    ),
    "cola": TaskSpec(
        name="cola", glue_dir="CoLA", hub_config="cola",
        text_a_column=3, text_b_column=None, label_column=1, has_header=False,
        num_labels=2, metrics=("mcc", "accuracy"), main_metric="mcc",
        hub_text_fields=("sentence",),
    ),
    "stsb": TaskSpec(
        name="stsb", glue_dir="STS-B", hub_config="stsb",
        text_a_column=7, text_b_column=8, label_column=9, has_header=True,
        num_labels=1, metrics=("pearson", "spearman"), main_metric="spearman",
    ),
    "qnli": TaskSpec(
        name="qnli", glue_dir="QNLI", hub_config="qnli",
        text_a_column=1, text_b_column=2, label_column=3, has_header=True,
        num_labels=2, metrics=("accuracy",), main_metric="accuracy",
        label_names=("entailment", "not_entailment"),
        hub_text_fields=("question", "sentence"),
    ),
}


CAUSAL_TASKS: dict[str, CausalTaskSpec] = {
    "dolly": CausalTaskSpec(name="dolly", hub_dataset="databricks/databricks-dolly-15k"),
    "sharegpt": CausalTaskSpec(name="sharegpt", hub_dataset=None, reader="sharegpt"),
}


def get_task(name: str) -> TaskSpec | CausalTaskSpec:
    """Return the spec of task `name`, or fail naming the tasks that exist."""
    if name in CAUSAL_TASKS:
        return CAUSAL_TASKS[name]
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}: dataset.name must be one of {sorted(TASKS) + sorted(CAUSAL_TASKS)}"
        ) from None
