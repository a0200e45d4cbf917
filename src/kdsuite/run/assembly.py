"""The assembly of a run: from a composed config to the trainer that distils.

`build_run(cfg)` checks everything the config can get wrong and builds what needs no model
weights: the task, the tokenizer, both architectures, the layer pairs, the loss, the tokenised
data and the training arguments of student and teacher, and finds the run's folder and the
checkpoint a resume continues from. Any error here comes before the teacher fine-tune, the data
download or training, and before any MLflow run. `build_student` and `build_trainer` finish the run once
the teacher is there. `kdsuite.run.job.train`, the benchmarks and the tests all call these, so
nothing else wires a trainer by hand.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, TrainerCallback, TrainingArguments

from kdsuite import distributed, models, rollout
from kdsuite.config_checks import check_settings
from kdsuite.data.run_data import RunData, check_data, data_digests, load_run_data
from kdsuite.losses.base import DistillationLoss, LossContext
from kdsuite.mapping import LayerPairs, validate_pairs
from kdsuite.run.run_folder import (
    RunIdentity,
    check_identity,
    checkpoint_to_resume,
    run_folder,
    run_identity,
    trainer_dir,
)
from kdsuite.teacher import cache as teacher_cache
from kdsuite.teacher import outputs as teacher_outputs
from kdsuite.tracks import ClassificationTask, InstructionTask, task_of
from kdsuite.trainer import DistillationTrainer, attach_loss, training_arguments


@dataclass
class Run:
    """A checked run: everything built from the config before any weights are loaded."""

    cfg: DictConfig
    task: ClassificationTask | InstructionTask
    tokenizer: object
    teacher_architecture: PretrainedConfig  # the teacher's config with the task's head
    student_architecture: PretrainedConfig
    layer_pairs: LayerPairs
    loss: DistillationLoss
    data: RunData
    student_args: TrainingArguments  # from `trainer.*`
    teacher_args: TrainingArguments  # from `teacher.finetune.*`; output_dir is set by the cache
    out_dir: Path  # the run's folder (see run_folder)
    identity: RunIdentity  # what the folder records as its owner
    resume_from: Path | None  # the checkpoint a `resume=true` run continues from
    teacher_entry: teacher_cache.CacheEntry  # where the fine-tuned teacher is cached, and its key
    teacher_outputs: teacher_outputs.TeacherOutputStore | None = None  # set once built (teacher.outputs=cached)
    teacher_tokenizer: object | None = None  # the teacher's, where the student has its own (loss=uld)
    rollout: rollout.RolloutSource | None = None  # whose text a step trains on (None: the data's)

    @property
    def needs_teacher(self) -> bool:
        """True when the loss reads the teacher or the student copies its blocks."""
        copies_teacher = not self.cfg.student.get("pretrained") and self.cfg.student.init == "teacher"
        return self.loss.needs_teacher or copies_teacher or bool(self.rollout and self.rollout.needs_teacher_model)


def placeholder_labels(task) -> torch.Tensor:
    """Two training labels of the task's kind: enough for a loss to check its settings before
    the real data is loaded."""
    return torch.tensor([0.0, 1.0]) if task.is_regression else torch.tensor([0, 1])


def resolve_student_architecture(cfg: DictConfig, teacher_architecture: PretrainedConfig) -> PretrainedConfig:
    if cfg.student.get("pretrained"):
        return AutoConfig.from_pretrained(models.resolve_location(cfg.student.pretrained))
    models.check_student_fits(cfg.student, teacher_architecture)
    return models.student_architecture(cfg.student, teacher_architecture)


def load_tokenizer(cfg: DictConfig, task, teacher_architecture: PretrainedConfig):
    """(the student's tokenizer, the teacher's): one object, the teacher's, unless the student has
    its own (`student.tokenizer`, or a pretrained student's that differs). The task's track checks
    the pair before any work: only a loss that declares `allows_other_tokenizer` (loss=uld) accepts
    two tokenizers, on the instruction track, after its own checks of the pair (the teacher's
    fine-tune and scoring then read the data in its own tokenization, `teacher_view`)."""
    return task.track.load_tokenizers(cfg, task, teacher_architecture)


def as_settings(section: DictConfig) -> dict:
    return OmegaConf.to_container(section, resolve=True)


def teacher_settings(cfg: DictConfig) -> dict:
    """`teacher.finetune.*`; for a teacher used as it comes (`teacher.finetune: null`, an
    instruction-tuned model), only how it is scored: the student's eval batch size and precision."""
    if cfg.teacher.get("finetune") is None:
        return {"per_device_eval_batch_size": cfg.trainer.per_device_eval_batch_size,
                "bf16": cfg.trainer.get("bf16", "auto"), "eval_strategy": "no"}
    return as_settings(cfg.teacher.finetune)


def training_batches(args: TrainingArguments, examples: int, world: int) -> int:
    """The training micro-batches each of `world` processes will make over `examples` training
    examples, by the Trainer's own arithmetic (transformers 5): L batches per process and epoch
    (`train_batch_size`, which counts every GPU of a process; accelerate's shards: ceil, or floor
    with `dataloader_drop_last`), U = ceil(L / g) optimizer steps per epoch whose last one takes the
    epoch's remaining L - (U - 1) g micro-batches, and M = `max_steps` or ceil(epochs x U) steps in
    all. Not modelled: accelerate's `split_batches` and `even_batches=false`."""
    size, accumulation = args.train_batch_size, args.gradient_accumulation_steps
    drop_last = args.dataloader_drop_last
    batches = examples // size if drop_last else math.ceil(examples / size)
    per_process = batches // world if drop_last else math.ceil(batches / world)
    steps_per_epoch = max(math.ceil(per_process / accumulation), 1)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    epochs, rest = divmod(steps, steps_per_epoch)
    return epochs * per_process + min(rest * accumulation, per_process)


def build_run(cfg: DictConfig) -> Run:
    """Check the config and build data, mapping, loss and training arguments; raises before any
    long work."""
    check_settings(cfg)
    task = task_of(cfg.dataset)
    check_data(cfg, task)
    # the rows' digest names the run's folder and teacher: the data files are read (not tokenized) here
    digests = data_digests(cfg, task)
    world = distributed.world_size()
    identity = run_identity(cfg, digests, world)
    out_dir = run_folder(cfg, identity)
    check_identity(cfg, out_dir, identity)
    resume_from = checkpoint_to_resume(cfg, out_dir, world, rollout.checkpoint_files(cfg, world))
    student_args = training_arguments(as_settings(cfg.trainer), str(trainer_dir(out_dir)), cfg.seed,
                                      section="trainer")
    finetuned = cfg.teacher.get("finetune") is not None
    # without a fine-tune the teacher's arguments are the student's (teacher_settings): their keys and
    # precision are trainer.*, already checked and warned about above
    teacher_args = training_arguments(teacher_settings(cfg), str(out_dir / "teacher"), cfg.seed,
                                      section="teacher.finetune" if finetuned else "trainer",
                                      warn_precision=finetuned)
    teacher_arch = models.teacher_architecture(cfg.teacher, task)
    tokenizer, teacher_tokenizer = load_tokenizer(cfg, task, teacher_arch)  # the student's first
    student_arch = resolve_student_architecture(cfg, teacher_arch)
    student_layers, teacher_layers = student_arch.num_hidden_layers, teacher_arch.num_hidden_layers

    make_loss = instantiate(cfg.loss)  # a partial: the class is known before the loss is built
    layer_pairs = validate_pairs(
        instantiate(cfg.mapping)(student_layers, teacher_layers), student_layers, teacher_layers,
        make_loss.func.needs_increasing_pairs,
    )
    context = LossContext(
        task=task,
        layer_pairs=layer_pairs,
        student_hidden_size=student_arch.hidden_size,
        teacher_hidden_size=teacher_arch.hidden_size,
        train_labels=placeholder_labels(task),
        seed=cfg.seed,
        tokenizers=(tokenizer, teacher_tokenizer) if tokenizer is not teacher_tokenizer else (),
        labels_are_placeholders=True,
        student_architecture=student_arch,
        teacher_architecture=teacher_arch,
    )
    # every check the loss makes, and teacher.outputs=cached's, before the data is tokenized
    teacher_outputs.output_spec(cfg, make_loss(context=context))
    rollout_source = rollout.build_source(cfg, task, make_loss.func, tokenizer)
    run_data = load_run_data(cfg, task, tokenizer, teacher_tokenizer)
    run_data.digests = digests
    batches = training_batches(student_args, len(run_data.train_set), world)
    loss = make_loss(context=dataclasses.replace(context, train_labels=run_data.train_labels,
                                                 labels_are_placeholders=False, training_batches=batches))
    return Run(cfg, task, tokenizer, teacher_arch, student_arch, layer_pairs, loss, run_data, student_args,
               teacher_args, out_dir, identity, resume_from, teacher_cache.cache_entry(cfg, digests),
               rollout=rollout_source,
               teacher_tokenizer=teacher_tokenizer if teacher_tokenizer is not tokenizer else None)


def teacher_view(run: Run) -> Run:
    """The run as its teacher's fine-tune and scoring see it: in the teacher's tokenization. The same
    run where both models share a tokenizer; across tokenizers (loss=uld), the run's data made anew
    with the teacher's tokenizer alone (same rows, so the same cache entry as a same-tokenizer run)."""
    if run.teacher_tokenizer is None:
        return run
    data = load_run_data(run.cfg, run.task, run.teacher_tokenizer)
    data.digests = run.data.digests
    return dataclasses.replace(run, tokenizer=run.teacher_tokenizer, data=data, teacher_tokenizer=None)


def build_student(run: Run, teacher: PreTrainedModel | None) -> PreTrainedModel:
    """The run's student: a checkpoint, a copy of the mapped teacher blocks, or random weights."""
    return models.build_student(run.cfg.student, teacher, run.teacher_architecture, run.layer_pairs, run.task)


def build_trainer(
    run: Run,
    model: PreTrainedModel,
    loss: DistillationLoss,
    teacher: PreTrainedModel | None,
    args: TrainingArguments,
    callbacks: list[TrainerCallback] = (),
) -> DistillationTrainer:
    """The Trainer that trains `model` with `loss` on the run's data.

    The loss module becomes a submodule of the model, so its learned parts are optimised and
    saved with it. `teacher` is given only when the loss reads it.
    """
    attach_loss(model, loss, teacher)
    return DistillationTrainer(
        model=model,
        args=args,
        train_dataset=run.data.train_set,
        eval_dataset=run.data.eval_set,
        processing_class=run.tokenizer,
        data_collator=run.data.collator,
        compute_metrics=run.data.compute_metrics,
        callbacks=list(callbacks),
        distillation_loss=loss,
        teacher=teacher if loss.needs_teacher else None,
        teacher_outputs=run.teacher_outputs if loss.needs_teacher else None,
        rollout=run.rollout if loss is run.loss else None,
    )
