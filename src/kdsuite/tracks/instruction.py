"""The instruction track: instruction following with causal LMs (Dolly, ShareGPT first turns), the
FDD paper's setting. Loss on response tokens only; the run's metric is ROUGE-L of sampled
responses (`kdsuite.generation`), with the validation loss reported during training.

`INSTRUCTION_TASKS` is the one description of each task (its reader and hub source); its run
settings (splits, lengths, prompt template, generation) are `conf/dataset/<task>.yaml`, whose
base `_instruction.yaml` selects this track (`track: instruction`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from kdsuite.tracks.base import Track
from kdsuite.tracks.specs import InstructionTask

# dataset settings that do not change a fine-tuned teacher: how it and the students are scored
# (`InstructionTrack.teacher_scoring` holds them: a cached teacher is scored again under new ones),
# the file (its rows' digest stands for it) and the track (it follows from the task; leaving it
# out keeps the keys of teachers cached before it)
NOT_IN_TEACHER_KEY = ("generation", "max_eval_samples", "path", "track")
# generation settings that change no score: how many samples are saved to MLflow
NOT_IN_SCORING = ("log_examples",)


class InstructionTrack(Track):
    """Instruction following with decoder LMs: prompts, response-token labels, sampled responses."""

    name = "instruction"
    length_settings = {"max_seq_length": 2, "max_prompt_length": 2}
    lengths_required = True
    scores_logits = False  # sampled responses are scored separately (ROUGE-L), after training
    pipeline_task = "text-generation"
    lora_task_type = "CAUSAL_LM"

    def check_data(self, cfg, task) -> None:
        from kdsuite.data.run_data import check_instruction_data

        check_instruction_data(cfg, task)

    def data_digests(self, cfg, task) -> dict[str, str]:
        from kdsuite.data.run_data import instruction_digests

        return instruction_digests(cfg, task)

    def load_data(self, cfg, task, tokenizer, teacher_tokenizer=None):
        from kdsuite.data.run_data import instruction_data

        return instruction_data(cfg, task, tokenizer, teacher_tokenizer)

    def load_tokenizers(self, cfg, task, teacher_architecture):
        """The teacher's tokenizer, prepared for prompts; the student's own only where its loss
        declares `allows_other_tokenizer` (loss=uld), after that loss's checks of the pair, or reads
        no teacher (loss=ce: the student alone, the cross-tokenizer student's reference), with
        `student.chat_template` (a Jinja chat template, set by the student's config) as its chat
        template where given: a student tokenizer with none (MiniLM's WordPiece) can then write its
        own prompts under `dataset.template=chat` (`instructions.with_chat_template`)."""
        from hydra.utils import get_class

        from kdsuite import models
        from kdsuite.data import instructions

        tokenizer = models.load_tokenizer(cfg.teacher)
        instructions.prepare_tokenizer(tokenizer)
        models.check_vocabulary(teacher_architecture, tokenizer, f"teacher {cfg.teacher.name!r}")
        student_tokenizer = models.load_student_tokenizer(cfg.student)
        chat_template = cfg.student.get("chat_template")
        if student_tokenizer is None or models.same_vocabulary(student_tokenizer, tokenizer):
            if chat_template:
                raise ValueError(f"student.chat_template is the chat template of a student with a tokenizer of its "
                                 f"own (student.tokenizer); student {cfg.student.name!r} shares teacher "
                                 f"{cfg.teacher.name!r}'s, whose chat template writes both prompts: drop it")
            return tokenizer, tokenizer
        loss_class = get_class(cfg.loss._target_)
        # a loss that reads no teacher (ce) trains the student alone, in its own tokenization: the
        # reference of a cross-tokenizer student, so it takes any tokenizer
        if loss_class.needs_teacher and not getattr(loss_class, "allows_other_tokenizer", False):
            models.check_same_tokenizer(tokenizer, models.student_tokenizer_location(cfg.student))  # raises
        instructions.prepare_tokenizer(student_tokenizer)
        if chat_template:
            student_tokenizer = instructions.with_chat_template(student_tokenizer, chat_template, "student")
        if hasattr(loss_class, "check_tokenizers"):
            loss_class.check_tokenizers(student_tokenizer, tokenizer, cfg.loss)
        source = (cfg.get("rollout") or {}).get("source", "dataset")
        if source != "dataset":  # generated text would come in one tokenization only
            raise ValueError(f"rollout.source={source!r} trains on generated text, which a run across tokenizers "
                             f"(student {student_tokenizer.name_or_path!r}, teacher {tokenizer.name_or_path!r}) "
                             f"cannot tokenize for both models: use rollout=dataset")
        return student_tokenizer, tokenizer

    def model_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def with_task_head(self, config, task):
        return config  # the LM head is the task head

    def pretrained_student(self, location, task, teacher_architecture):
        """The checkpoint as it is: the tokenizers were compared when the run was planned."""
        from kdsuite.models import resolve_location

        return self.model_class().from_pretrained(resolve_location(location))

    def task_loss(self, logits, labels, is_regression: bool):
        from kdsuite.losses.tokens import response_token_ce

        return response_token_ce(logits, labels)

    def check_rollout_source(self, task, source: str) -> None:
        """Every source generates prompts' responses here."""

    def teacher_cache_dataset(self, dataset, digests: dict[str, str]) -> dict:
        """The dataset config less `NOT_IN_TEACHER_KEY`, and the digests of the rows the teacher
        trains and is scored on."""
        from omegaconf import OmegaConf

        described = OmegaConf.to_container(dataset, resolve=True)
        for key in NOT_IN_TEACHER_KEY:
            described.pop(key, None)
        described["rows_sha256"] = {"train": digests["train"], "validation": digests["validation_all"]}
        return described

    def teacher_scoring(self, dataset, digests: dict[str, str]) -> dict:
        """The validation rows of the validation loss (after `max_eval_samples`), the prompts and
        references scored by ROUGE-L, and the sampling settings (`dataset.generation`)."""
        from omegaconf import OmegaConf

        generation = OmegaConf.to_container(dataset.generation, resolve=True)
        for key in NOT_IN_SCORING:
            generation.pop(key, None)
        return {"validation_rows": digests["validation"], "generation_rows": digests["generation"],
                "generation": generation}

    def data_source(self, settings, task, part: str):
        """The JSON(L) file, else the task's hub dataset, else the dataset's name."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        if settings.get("path"):
            return resolve_dataset_source(str(Path(settings.path).expanduser()))
        if task.hub_dataset:
            return HuggingFaceDatasetSource(task.hub_dataset, split="train")
        return CodeDatasetSource({"dataset": str(settings.name)})


INSTRUCTION = InstructionTrack()
_task = partial(InstructionTask, track=INSTRUCTION)

INSTRUCTION_TASKS: dict[str, InstructionTask] = {
    "dolly": _task(name="dolly", hub_dataset="databricks/databricks-dolly-15k"),
    "sharegpt": _task(name="sharegpt", hub_dataset=None, reader="sharegpt"),
}
INSTRUCTION.tasks = INSTRUCTION_TASKS
