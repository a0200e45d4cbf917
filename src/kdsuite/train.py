"""`train(cfg) -> float`: one distillation run, the function behind `run.py` (and tests, scripts
and sweeps). It returns the task's main dev metric, the objective a sweep maximises.

Order of work: everything that can be wrong with the config is checked first (task, data files,
student depth and width, layer mapping, loss settings), then the teacher is fetched from the
cache or fine-tuned (its own MLflow run, `role=teacher`), then the student is trained in an
MLflow run of its own (`role=student`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, PreTrainedModel, set_seed

from kdsuite import instructions, models, task_data, teacher as teacher_cache, tracking
from kdsuite.generation import evaluate_generation
from kdsuite.losses.base import DistillationLoss, LossContext
from kdsuite.losses.ce import CELoss
from kdsuite.mapping import LayerPairs, validate_pairs
from kdsuite.pruning import pruning_callbacks
from kdsuite.tasks import CausalTaskSpec, TaskSpec, get_task
from kdsuite.trainer import DistillationTrainer, attach_loss, training_arguments

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """A checked run: everything built from the config before any training."""

    task: TaskSpec | CausalTaskSpec
    tokenizer: object
    teacher_config: object
    layer_pairs: LayerPairs
    loss: DistillationLoss
    data: task_data.TaskData


def output_dir(cfg: DictConfig) -> Path:
    """`cfg.output_dir`, else the Hydra job's folder, else a fresh temporary folder."""
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(tempfile.mkdtemp(prefix="kdsuite-"))


def student_architecture(cfg: DictConfig, teacher_config) -> object:
    if cfg.student.get("pretrained"):
        return AutoConfig.from_pretrained(models.resolve_location(cfg.student.pretrained))
    models.check_student_fits(cfg.student, teacher_config)
    return models.student_config(cfg.student, teacher_config)


def load_tokenizer(cfg: DictConfig, task, teacher_config) -> object:
    """The teacher's tokenizer; on the causal-LM track also checked against the model and the student."""
    tokenizer = models.load_tokenizer(cfg.teacher)
    if task.is_causal_lm:
        instructions.prepare_tokenizer(tokenizer)
        models.check_vocabulary(teacher_config, tokenizer, f"teacher {cfg.teacher.name!r}")
        if cfg.student.get("pretrained"):
            models.check_same_tokenizer(tokenizer, cfg.student.pretrained)
    return tokenizer


def plan_run(cfg: DictConfig) -> RunPlan:
    """Check the config and build data, mapping and loss; raises before any long work."""
    task = get_task(cfg.dataset.name)
    task_data.check_data(cfg, task)
    teacher_config = models.teacher_config(cfg.teacher, task)
    tokenizer = load_tokenizer(cfg, task, teacher_config)
    student_config = student_architecture(cfg, teacher_config)
    student_layers, teacher_layers = student_config.num_hidden_layers, teacher_config.num_hidden_layers
    layer_pairs = instantiate(cfg.mapping)(student_layers, teacher_layers)
    validate_pairs(layer_pairs, student_layers, teacher_layers)

    run_data = task_data.task_data(cfg, task, tokenizer)
    context = LossContext(
        task=task,
        layer_pairs=layer_pairs,
        student_hidden_size=student_config.hidden_size,
        teacher_hidden_size=teacher_config.hidden_size,
        train_labels=run_data.train_labels,
    )
    loss = instantiate(cfg.loss)(context=context)
    validate_pairs(layer_pairs, student_layers, teacher_layers, loss.needs_increasing_pairs)
    return RunPlan(task, tokenizer, teacher_config, layer_pairs, loss, run_data)


def fit(
    model: PreTrainedModel,
    loss: DistillationLoss,
    teacher: PreTrainedModel | None,
    plan: RunPlan,
    settings: DictConfig,
    seed: int,
    out_dir: Path,
    callbacks: list | None = None,
    train_model: bool = True,
) -> dict[str, float]:
    """Train `model` with `loss` under `settings` (TrainingArguments keys), then score it on dev
    (`train_model=False`: score it only, e.g. a teacher used as it comes).

    The loss module becomes a submodule of the model, so its learned parts are optimised and
    saved with it. Returns the final dev metrics: the task's GLUE metrics and the task `loss`
    (the Trainer logs them as `final/<name>`); on the causal-LM track, the validation loss and
    ROUGE-L of sampled responses (`final/rougeL`, per seed too, and `generations.json`).
    """
    attach_loss(model, loss, teacher)
    args = training_arguments(OmegaConf.to_container(settings, resolve=True), str(out_dir), seed)
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=plan.data.train_set,
        eval_dataset=plan.data.eval_set,
        processing_class=plan.tokenizer,
        data_collator=plan.data.collator,
        compute_metrics=plan.data.compute_metrics,
        callbacks=[tracking.MlflowMetricsCallback(), *(callbacks or [])],
        distillation_loss=loss,
        teacher=teacher,
    )
    if train_model:
        trainer.train()
    final = trainer.evaluate(metric_key_prefix="final")
    metrics = {name: final[f"final_{name}"] for name in (*plan.task.metrics, "loss") if f"final_{name}" in final}
    if plan.data.generation is not None:
        scores, samples = evaluate_generation(model, plan.tokenizer, plan.data.generation,
                                              plan.data.generation_settings)
        mlflow.log_metrics({f"final/{name}": value for name, value in scores.items()})
        mlflow.log_dict(samples, "generations.json")
        metrics.update(scores)
    return metrics


def log_final(task: TaskSpec, metrics: dict[str, float]) -> float:
    objective = metrics[task.main_metric]
    mlflow.log_metric("final_metric", objective)
    mlflow.set_tag("main_metric", task.main_metric)
    return objective


def prepare_teacher(cfg: DictConfig, plan: RunPlan) -> teacher_cache.FineTunedTeacher:
    """The fine-tuned teacher from the cache, or fine-tuned now in a `role=teacher` MLflow run.

    `teacher.finetune: null` uses the teacher as it comes (an instruction-tuned model): the run
    only scores it, with the student's eval batch size, and the cache keeps it under its own key."""
    finetune_settings = cfg.teacher.get("finetune")

    def finetune(trainer_dir: Path):
        tags = {"role": "teacher", "teacher": cfg.teacher.name, "dataset": cfg.dataset.name,
                "finetuned": str(finetune_settings is not None)}
        run_name = f"teacher-{cfg.teacher.name}-{cfg.dataset.name}"
        with tracking.tracked_run(run_name, tags) as run:
            mlflow.log_params(tracking.flatten(teacher_cache.cache_key(cfg)))
            set_seed(cfg.seed if finetune_settings is None else finetune_settings.get("seed", cfg.seed))
            model = models.load_pretrained_teacher(cfg.teacher, plan.task)
            loss = CELoss(LossContext(plan.task, [], 0, 0, torch.empty(0)))
            if finetune_settings is None:
                settings = OmegaConf.create({"per_device_eval_batch_size": cfg.trainer.per_device_eval_batch_size,
                                             "bf16": cfg.trainer.get("bf16", "auto")})
                metrics = fit(model, loss, None, plan, settings, cfg.seed, trainer_dir, train_model=False)
            else:
                metrics = fit(model, loss, None, plan, finetune_settings, cfg.seed, trainer_dir)
            log_final(plan.task, metrics)
        log.info("teacher %s on %s: dev %s", cfg.teacher.name, cfg.dataset.name, metrics)
        return model, plan.tokenizer, metrics, run.info.run_id

    return teacher_cache.get_or_finetune(cfg, finetune)


def train(cfg: DictConfig) -> float:
    """Run one configured distillation and return its main dev metric."""
    plan = plan_run(cfg)
    out_dir = output_dir(cfg)
    tracking.configure(cfg.tracking)

    needs_teacher = plan.loss.needs_teacher or (
        not cfg.student.get("pretrained") and cfg.student.init == "teacher"
    )
    teacher = prepare_teacher(cfg, plan) if needs_teacher else None

    tags = {
        "role": "student",
        "teacher": cfg.teacher.name,
        "student": cfg.student.name,
        "loss": plan.loss.name,
        "dataset": cfg.dataset.name,
        "seed": str(cfg.seed),
        "layer_pairs": str(plan.layer_pairs),
    }
    if teacher is not None:
        tags.update(teacher_path=str(teacher.path), teacher_run_id=str(teacher.run_id))
    tags.update({key: str(value) for key, value in (cfg.tracking.get("tags") or {}).items()})
    run_name = f"{plan.loss.name}-{cfg.student.name}-{cfg.dataset.name}-s{cfg.seed}"
    with tracking.tracked_run(run_name, tags, cfg, parent_run_id=cfg.tracking.get("parent_run_id")):
        if teacher is not None:
            mlflow.log_metrics({f"teacher/{name}": value for name, value in teacher.metrics.items()})
        set_seed(cfg.seed)
        student = models.build_student(
            cfg.student,
            teacher.model if teacher is not None else None,
            plan.teacher_config,
            plan.layer_pairs,
            plan.task,
        )
        mlflow.log_params({
            "student_parameters": models.count_parameters(student),
            "student_trainable_parameters": models.count_parameters(student, trainable_only=True),
        })
        teacher_model = teacher.model if plan.loss.needs_teacher else None
        metrics = fit(
            student, plan.loss, teacher_model, plan, cfg.trainer, cfg.seed, out_dir / "trainer",
            callbacks=pruning_callbacks(cfg, plan.task.main_metric),
        )
        if cfg.get("save_student"):
            student.save_pretrained(out_dir / "student")
            plan.tokenizer.save_pretrained(out_dir / "student")
        return log_final(plan.task, metrics)
