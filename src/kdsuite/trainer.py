"""The `transformers.Trainer` subclass that distils: it only wires things together.

Per step: one student forward, at most one teacher forward (no grad, eval mode, same device, at
the training precision, hidden states and logits from that single call) or, with a teacher-output
cache, the batch's cached teacher outputs instead, one call of the loss, and the bookkeeping that
lets every loss term reach the logs. Mixed precision, gradient accumulation, checkpointing,
torch.compile and DDP are the Trainer's own.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from kdsuite.distributed import all_reduce_sum, cpu_only_launch
from kdsuite.host_memory import keep_freed_memory_in_heap
from kdsuite.losses.base import DistillationLoss
from kdsuite.private_api import checkpoints_written_to, reset_accelerator_state
from kdsuite.signals import deferred_signals

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
STAGING_DIR = ".saving"  # checkpoints are written here, then renamed into place

log = logging.getLogger(__name__)


def model_inputs(batch: dict) -> dict:
    """The tensors a Hugging Face encoder takes; labels and example indices stay with the loss."""
    return {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}


def attach_loss(model, loss: DistillationLoss, teacher=None) -> None:
    """Make the loss a submodule of the student (its learned parts train and save with it) and
    let it bind to the models' own modules (fdd's head space)."""
    model.add_module("distillation_loss", loss)
    loss.bind_models(model, teacher)


class TermAverager:
    """Running means of detached loss terms, kept on device so logging causes the only sync.

    Under DDP `pop` is collective: the means are over the micro-batches of every process (one
    all-reduce), so each process logs the run's global means.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def pop(self) -> dict[str, float]:
        names = sorted(self.sums)
        if not names:  # a loss with no term but its total: nothing to log, on every process alike
            self.count = 0
            return {}
        totals = torch.stack([self.sums[name] for name in names] + [self.sums[names[0]].new_tensor(self.count)])
        totals = all_reduce_sum(totals)
        self.sums, self.count = {}, 0
        return {name: (total / totals[-1]).item() for name, total in zip(names, totals)}


class _LogEpochTerms(TrainerCallback):
    def __init__(self, trainer: "DistillationTrainer"):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.log_epoch_terms()


class DistillationTrainer(Trainer):
    """Trainer whose loss is a `DistillationLoss` over student (and teacher) outputs.

    Logged per logging window: every term of the loss (`ce`, `kd`, ...) next to the Trainer's own
    `loss`; at each epoch end: the epoch means as `epoch/<term>`. A non-finite term stops the
    run with FloatingPointError naming the step and the terms.
    """

    # compute_loss normalises by the whole accumulated batch itself (see `_scale_for_accumulation`)
    loss_is_scaled_for_ga = True

    def __init__(self, *args, distillation_loss: DistillationLoss, teacher=None, teacher_outputs=None, rollout=None,
                 **kwargs):
        # accelerate keeps one AcceleratorState per process and refuses a second mixed precision, but
        # one process builds several Trainers: the teacher's fine-tune, then the student (on a CPU the
        # former in fp32, the latter perhaps in bf16), or a sweep worker's successive trials. Each
        # Trainer is set up from its own arguments; the process group (PartialState) is kept.
        reset_accelerator_state()
        super().__init__(*args, **kwargs)
        if self.args.device.type == "cpu":  # each step would otherwise fault in its memory anew
            keep_freed_memory_in_heap()
        if distillation_loss.needs_teacher and teacher is None and teacher_outputs is None:
            raise ValueError(f"loss {distillation_loss.name!r} needs a teacher, none was given")
        self.distillation_loss = distillation_loss
        self.teacher = teacher
        self.teacher_outputs = teacher_outputs  # a TeacherOutputStore: no teacher forward at all
        if teacher is not None:
            teacher.to(self.args.device, dtype=training_dtype(self.args)).eval().requires_grad_(False)
        self._window_terms = TermAverager()
        self._epoch_terms = TermAverager()
        self.add_callback(_LogEpochTerms(self))
        self.rollout = rollout  # a kdsuite.rollout source: whose text each step trains on (None: the data's)
        if rollout is not None:
            from kdsuite.rollout.callback import RolloutCallback

            self.add_callback(RolloutCallback(self, rollout))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_fn = self.distillation_loss
        if self.rollout is not None:
            inputs = self.rollout.batch_for_step(self.accelerator.unwrap_model(model), inputs, self.state.global_step,
                                                 self.state.max_steps)
            if self.rollout.replaces_batches:  # every micro-batch its own token mean (see RolloutSource)
                num_items_in_batch = None
        features = model_inputs(inputs)
        student_out = model(**features, output_hidden_states=loss_fn.needs_hidden_states)
        teacher_out = self.teacher_forward(features, inputs) if loss_fn.needs_teacher else None
        terms = loss_fn(student_out, teacher_out, inputs)
        logged_terms = {name: value for name, value in terms.items() if name != "loss"}
        self._window_terms.add(logged_terms)
        self._epoch_terms.add(logged_terms)
        loss = self._scale_for_accumulation(terms["loss"], inputs["labels"], num_items_in_batch)
        return (loss, student_out) if return_outputs else loss

    def teacher_forward(self, features: dict, inputs: dict):
        """The teacher's outputs on this batch: read back from the output cache, or one forward.

        The live teacher holds its weights at the training precision (cast once in `__init__`),
        so under bf16/fp16 it runs in that precision without autocast; the losses upcast to fp32
        where their math needs it.
        """
        if self.teacher_outputs is not None:
            return self.teacher_outputs.batch_outputs(inputs)
        teacher_inputs = getattr(self.distillation_loss, "teacher_inputs", None)  # loss=uld: the teacher's own tokens
        if teacher_inputs is not None:
            features = teacher_inputs(inputs)
        with torch.no_grad():
            return self.teacher(**features, output_hidden_states=self.distillation_loss.needs_hidden_states)

    def _scale_for_accumulation(self, loss, labels, num_items_in_batch):
        """Per-example mean of this micro-batch -> its share of the accumulated batch's mean.

        With `num_items_in_batch` (labelled examples over all micro-batches of the step) the
        share is exact even when the last micro-batch is short; without it, divide by the number
        of accumulation steps as the Trainer would.
        """
        if num_items_in_batch is None:
            return loss / self.current_gradient_accumulation_steps
        if labels.dim() > 1:  # causal LM: the Trainer counts shifted response tokens
            labels = labels[:, 1:]
        share = labels.ne(-100).sum() / num_items_in_batch
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            share = share * self.accelerator.num_processes  # DDP averages gradients over ranks
        return loss * share

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """The Trainer's `train`, with the rollout source's state restored from the checkpoint."""
        if self.rollout is not None and resume_from_checkpoint:
            from kdsuite.rollout.callback import load_state

            if resume_from_checkpoint is True:
                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            load_state(self.rollout, resume_from_checkpoint, self.args.process_index)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_rng_state(self, output_dir: str) -> None:
        """The RNG states, and beside them the rollout source's (`rollout_state.pt`), per process."""
        super()._save_rng_state(output_dir)
        if self.rollout is not None:
            from kdsuite.rollout.callback import save_state

            save_state(self.rollout, output_dir, self.args.process_index)

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-<step>` under a temporary folder, then rename it into place, with
        SIGTERM/SIGINT held back until the save is done: a kill never leaves a folder that looks
        like a complete checkpoint. Rotation (`save_total_limit`) keeps the newest by step."""
        run_dir = Path(self._get_output_dir(trial))
        staging = run_dir / STAGING_DIR
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with deferred_signals():
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            with checkpoints_written_to(self, str(staging)):
                super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()  # every rank has written its part (RNG states)
            if self.args.should_save:
                shutil.rmtree(run_dir / name, ignore_errors=True)  # the same step saved again after a resume
                os.replace(staging / name, run_dir / name)
                shutil.rmtree(staging, ignore_errors=True)
                rotate_checkpoints(str(run_dir), self.args.save_total_limit, use_mtime=False)
            self.accelerator.wait_for_everyone()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation is of the student alone: its task loss and its logits (the loss only for
        causal LMs, whose sampled responses are scored separately)."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(**model_inputs(inputs)).logits
            loss = self.distillation_loss.task_loss(logits, labels)
        if prediction_loss_only or not self.distillation_loss.track.scores_logits:
            return loss.detach(), None, None
        return loss.detach(), logits.detach().float(), labels

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        is_training_log = not any(key.startswith("eval_") for key in logs)
        if is_training_log and self._window_terms.count:
            terms = self._window_terms.pop()
            self._raise_if_not_finite(terms)
            logs = {**logs, **terms}
        if is_training_log and self.rollout is not None:
            logs = {**logs, **self.rollout.pop_metrics(self.args.device)}
        super().log(logs, start_time)

    def log_epoch_terms(self) -> None:
        if self._epoch_terms.count:
            terms = self._epoch_terms.pop()
            self._raise_if_not_finite(terms)
            self.log({f"epoch/{name}": value for name, value in terms.items()})

    def _raise_if_not_finite(self, terms: dict[str, float]) -> None:
        bad = {name: value for name, value in terms.items() if not math.isfinite(value)}
        if bad:
            raise FloatingPointError(
                f"non-finite loss at step {self.state.global_step}: {bad} (all terms: {terms}); "
                f"lower trainer.learning_rate or check the loss weights and inputs"
            )


def training_dtype(args: TrainingArguments) -> torch.dtype:
    """The precision a run computes in: bf16 or fp16 when mixed precision is on, else fp32.

    The teacher is cast to it (a frozen model gains nothing from fp32 master weights): under
    autocast its fp32 weights would be re-cast at every forward, since autocast caches casts of
    trainable weights only.
    """
    if args.bf16:
        return torch.bfloat16
    return torch.float16 if args.fp16 else torch.float32


def resolve_bf16(value) -> bool:
    """`auto` means bf16 exactly when a CUDA GPU that supports it is present."""
    if value == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(value)


def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN, which runs CPU autocast's bf16 matrix products, has bf16 kernels for this
    CPU: on x86 from AVX-512 on (native with AVX512-BF16 or AMX, converting on older AVX-512), on
    Arm with the BF16 extension. Without them (AVX2 only) autocast's bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN: no fast bf16 kernels
        return False


def warn_if_emulated_bf16(section: str) -> None:
    """bf16 on a CPU without bf16 kernels is emulated: a bert2l step ran 22x slower than in fp32
    on an AVX2 CPU (`experiments/bench/bench_cpu_bf16.py`, results/bench.md), so say it before the work
    starts rather than let a run take hours. A warning, not an error: the precision is a valid
    choice (the GLUE grid pins bf16 so that CPU runs compute what GPU runs compute)."""
    if not cpu_has_bf16_kernels():
        log.warning(
            "%s.bf16=true on a CPU without bf16 kernels (%s): autocast emulates it there, many times "
            "slower than fp32 (a bert2l step 22x on an AVX2 CPU); set %s.bf16=false (or auto) unless "
            "bf16 numerics are what you want", section, torch.backends.cpu.get_cpu_capability(), section,
        )


def training_arguments(settings: dict, output_dir: str, seed: int, section: str = "trainer",
                       warn_precision: bool = True) -> TrainingArguments:
    """`TrainingArguments` from a `trainer`/`teacher.finetune` config section (named by `section`
    in errors). `warn_precision=False` leaves out the emulated-bf16 warning, for arguments derived
    from a section whose own arguments already gave it.

    The suite owns MLflow (`report_to="none"`) and keeps `example_index` in batches
    (`remove_unused_columns=False`). Under DDP, `ddp_find_unused_parameters` defaults to false: a
    loss's learned parts (projections, heads) are used after the model's forward, so DDP's search
    for unused parameters at the end of the forward would count them as unused and then fail when
    their gradients arrive. Several processes on a machine without an accelerator get `use_cpu`,
    without which transformers would not start DDP (gloo) there; so does `bf16: true` there (CPU
    autocast, which transformers allows only with `use_cpu`).
    """
    settings = dict(settings)
    settings["bf16"] = resolve_bf16(settings.get("bf16", "auto"))
    settings.setdefault("seed", seed)
    settings.setdefault("dataloader_pin_memory", torch.cuda.is_available())
    settings.setdefault("ddp_find_unused_parameters", False)
    settings.setdefault("use_cpu", cpu_only_launch() or (settings["bf16"] and not torch.cuda.is_available()))
    if warn_precision and settings["bf16"] and (settings["use_cpu"] or not torch.cuda.is_available()):
        warn_if_emulated_bf16(section)
    known = {field.name for field in dataclasses.fields(TrainingArguments) if field.init}
    unknown = sorted(set(settings) - known)
    if unknown:
        suggestions = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        hints = ", ".join(f"{section}.{key}" + (f" (did you mean {section}.{close[0]}?)" if close else "")
                          for key, close in suggestions.items())
        raise ValueError(f"{hints}: not a transformers.TrainingArguments field")
    return TrainingArguments(output_dir=output_dir, report_to="none", remove_unused_columns=False, **settings)
