"""The classification track: GLUE tasks, sequence classifiers with a task head, cross-entropy (MSE
for STS-B), GLUE's metrics on the dev set's logits.

`GLUE_TASKS` is the one description of each GLUE task (TSV columns, labels, metrics); its run
settings (lengths, subsets, where the files are) are `conf/dataset/<task>.yaml`, whose base
`_glue.yaml` selects this track (`track: classification`).
"""

from __future__ import annotations

from functools import partial

from kdsuite.tracks.base import Track
from kdsuite.tracks.specs import ClassificationTask

# The fewest tokens a GLUE example may be cut to: BERT-style tokenizers spend 3 on a sentence pair
# ([CLS] a [SEP] b [SEP]), and 16 leaves at least 6 real tokens to each sentence of a pair. Below
# it an RTE pair becomes `[CLS] [SEP] [SEP]` and trains on nothing (seen at max_seq_length=3).
MIN_SEQ_LENGTH = 16


class ClassificationTrack(Track):
    """Sentence(-pair) classification and regression with encoder classifiers (GLUE)."""

    name = "classification"
    length_settings = {"max_seq_length": MIN_SEQ_LENGTH}
    lengths_required = False
    scores_logits = True
    pipeline_task = "text-classification"
    lora_task_type = "SEQ_CLS"

    def check_data(self, cfg, task) -> None:
        from kdsuite.data import glue

        glue.check_data_available(task, cfg.dataset.data_dir)

    def data_digests(self, cfg, task) -> dict[str, str]:
        from kdsuite.data.run_data import glue_digests

        return glue_digests(cfg, task)

    def load_data(self, cfg, task, tokenizer, teacher_tokenizer=None):
        from kdsuite.data.run_data import glue_data

        return glue_data(cfg, task, tokenizer)

    def load_tokenizers(self, cfg, task, teacher_architecture):
        """The teacher's tokenizer, for both models: a classifier student shares it."""
        from kdsuite import models

        tokenizer = models.load_tokenizer(cfg.teacher)
        if cfg.student.get("tokenizer"):
            raise ValueError(
                f"student.tokenizer={cfg.student.tokenizer!r}: task {task.name!r} trains classifiers (an encoder-only "
                f"task), whose student shares teacher {cfg.teacher.name!r}'s tokenizer; set student.tokenizer=null"
            )
        return tokenizer, tokenizer

    def model_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def with_task_head(self, config, task):
        config.num_labels = task.num_labels
        config.problem_type = "regression" if task.is_regression else "single_label_classification"
        return config

    def pretrained_student(self, location, task, teacher_architecture):
        """A classifier checkpoint with a new head of the task's labels; its vocabulary must be the
        teacher's (the models share a tokenizer)."""
        from kdsuite.models import resolve_location

        student = self.model_class().from_pretrained(resolve_location(location), num_labels=task.num_labels)
        if student.config.vocab_size != teacher_architecture.vocab_size:
            raise ValueError(
                f"student.pretrained={location!r} has vocabulary size "
                f"{student.config.vocab_size} but the teacher's tokenizer has "
                f"{teacher_architecture.vocab_size}: teacher and student must share a tokenizer"
            )
        self.with_task_head(student.config, task)
        return student

    def task_loss(self, logits, labels, is_regression: bool):
        from kdsuite.losses.base import task_loss

        return task_loss(logits, labels, is_regression)

    def check_rollout_source(self, task, source: str) -> None:
        raise ValueError(
            f"rollout={source} generates responses; task {task.name!r} trains sequence classifiers, "
            f"which have none: use rollout=dataset"
        )

    def teacher_cache_dataset(self, dataset, digests: dict[str, str]) -> dict:
        """The task, where its rows come from and their digests, and the sizes and length the
        teacher is trained and scored with."""
        return {
            "name": dataset.name,
            "source": "files" if dataset.data_dir else "hub",
            "rows_sha256": {"train": digests["train"], "validation": digests["validation"]},
            "max_train_samples": dataset.max_train_samples,
            "max_eval_samples": dataset.max_eval_samples,
            "max_seq_length": dataset.max_seq_length,
        }

    def teacher_scoring(self, dataset, digests: dict[str, str]) -> dict:
        """Nothing beyond the key: the teacher is scored on the dev rows the key names."""
        return {}

    def data_source(self, settings, task, part: str):
        """The split's TSV file, else the `nyu-mll/glue` hub dataset."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        if settings.get("data_dir"):
            from kdsuite.data.glue import split_path

            return resolve_dataset_source(str(split_path(task, settings.data_dir, part)))  # a local file
        return HuggingFaceDatasetSource("nyu-mll/glue", config_name=task.hub_config, split=part)


CLASSIFICATION = ClassificationTrack()
_task = partial(ClassificationTask, track=CLASSIFICATION)

GLUE_TASKS: dict[str, ClassificationTask] = {
    "sst2": _task(
        name="sst2", glue_dir="SST-2", hub_config="sst2",
        text_a_column=0, text_b_column=None, label_column=1, has_header=True,
        num_labels=2, metrics=("accuracy",), main_metric="accuracy",
        hub_text_fields=("sentence",),
    ),
    "mrpc": _task(
        name="mrpc", glue_dir="MRPC", hub_config="mrpc",
        text_a_column=3, text_b_column=4, label_column=0, has_header=True,
        num_labels=2, metrics=("accuracy", "f1"), main_metric="f1",
    ),
    "rte": _task(
        name="rte", glue_dir="RTE", hub_config="rte",
        text_a_column=1, text_b_column=2, label_column=3, has_header=True,
        num_labels=2, metrics=("accuracy",), main_metric="accuracy",
        label_names=("entailment", "not_entailment"),
    ),
    "cola": _task(
        name="cola", glue_dir="CoLA", hub_config="cola",
        text_a_column=3, text_b_column=None, label_column=1, has_header=False,
        num_labels=2, metrics=("mcc", "accuracy"), main_metric="mcc",
        hub_text_fields=("sentence",),
    ),
    "stsb": _task(
        name="stsb", glue_dir="STS-B", hub_config="stsb",
        text_a_column=7, text_b_column=8, label_column=9, has_header=True,
        num_labels=1, metrics=("pearson", "spearman"), main_metric="spearman",
    ),
    "qnli": _task(
        name="qnli", glue_dir="QNLI", hub_config="qnli",
        text_a_column=1, text_b_column=2, label_column=3, has_header=True,
        num_labels=2, metrics=("accuracy",), main_metric="accuracy",
        label_names=("entailment", "not_entailment"),
        hub_text_fields=("question", "sentence"),
    ),
}
CLASSIFICATION.tasks = GLUE_TASKS
