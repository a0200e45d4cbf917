"""`train(cfg) -> float`: one distillation run, the function behind `run.py` (and tests, scripts
and sweeps). It returns the task's main dev metric, the objective a sweep maximises.

Order of work: `build_run` checks everything that can be wrong with the config (task, data
files, training arguments, student depth and width, layer mapping, loss settings), then the
teacher is fetched from the cache or fine-tuned (its own MLflow run, `role=teacher`), then the
student is trained in an MLflow run of its own (`role=student`).

Under `torchrun`/`accelerate launch` every process runs `train`: they join one process group
first, the teacher is fine-tuned once (`kdsuite.teacher.shared`), and only the main process writes MLflow
and the saved student (`kdsuite.distributed`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from omegaconf import OmegaConf
from transformers import set_seed

from kdsuite import distributed, models, rollout
from kdsuite import tracking_names as names
from kdsuite.config_checks import check_settings
from kdsuite.data.run_data import check_data, data_digests
from kdsuite.generation import evaluate_generation
from kdsuite.losses.base import LossContext
from kdsuite.losses.ce import CELoss
from kdsuite.run import run_folder, tracking
from kdsuite.run.assembly import Run, build_run, build_student, build_trainer, teacher_view
from kdsuite.run.pruning import pruning_callbacks
from kdsuite.signals import stop_on_signals
from kdsuite.stores.check import check_store
from kdsuite.teacher import cache as teacher_cache
from kdsuite.teacher import outputs as teacher_outputs
from kdsuite.teacher.shared import teacher_for_every_process
from kdsuite.tracks import task_of
from kdsuite.trainer import DistillationTrainer

log = logging.getLogger(__name__)


def fit(
    run: Run, trainer: DistillationTrainer, resume_from: Path | None = None, train_model: bool = True
) -> dict[str, float]:
    """Train (from the checkpoint `resume_from`, if given), then score the model on dev
    (`train_model=False`: score it only, a teacher used as it comes).

    Returns the final dev metrics: the task's GLUE metrics and the task `loss` (the Trainer logs
    them as `final/<name>`); on the causal-LM track, the validation loss and ROUGE-L of sampled
    responses (`final/rougeL`, per seed too, and `generations.json`).
    """
    if train_model:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    final = trainer.evaluate(metric_key_prefix="final")
    metrics = {name: final[f"final_{name}"] for name in (*run.task.metrics, "loss") if f"final_{name}" in final}
    if run.data.generation is not None:
        scores, samples = evaluate_generation(trainer.model, run.tokenizer, run.data.generation,
                                              run.data.generation_settings)
        tracking.log_generations(scores, samples)
        metrics.update(scores)
    return metrics


def prepare_teacher(run: Run) -> teacher_cache.FineTunedTeacher:
    """The fine-tuned teacher from the cache, or fine-tuned now in a `role=teacher` MLflow run.

    `teacher.finetune: null` uses the teacher as it comes (an instruction-tuned model): its run only
    scores it, and the cache keeps it under its own key. A cached teacher not yet scored under the
    run's scoring settings (`Track.teacher_scoring`) is scored in a `role=teacher` run of its own
    (tag `scored_from_cache`), so its `teacher/<metric>` is measured as the run's students are. A
    student with its own tokenizer does not change this: the teacher is trained and scored on the
    data in its own tokenization."""
    cfg = run.cfg
    entry = run.teacher_entry
    finetune_settings = cfg.teacher.get("finetune")

    def teacher_run(trainer_dir: Path, cached=None):
        """Fine-tune (or, with `finetune: null`, score) the configured teacher; with `cached` (a
        model from the cache), score that one without training."""
        seen = teacher_view(run)
        run_name = f"teacher-{cfg.teacher.name}-{cfg.dataset.name}" + ("-scored" if cached is not None else "")
        tags = {**tracking.teacher_tags(cfg), "finetuned": str(finetune_settings is not None)}
        if cached is not None:
            tags[names.SCORED_FROM_CACHE] = str(entry.path)
        with tracking.tracked_run(run_name, tags) as mlflow_run:
            tracking.log_cache_key(entry.key)
            set_seed(cfg.seed if finetune_settings is None else finetune_settings.get("seed", cfg.seed))
            model = cached if cached is not None else models.load_pretrained_teacher(cfg.teacher, seen.task)
            seen.teacher_args.output_dir = str(trainer_dir)
            trainer = build_trainer(seen, model, CELoss(LossContext(seen.task)), None, seen.teacher_args,
                                    [tracking.MlflowMetricsCallback()])
            metrics = fit(seen, trainer, train_model=finetune_settings is not None and cached is None)
            tracking.log_final(seen.task.main_metric, metrics)
        log.info("teacher %s on %s: dev %s", cfg.teacher.name, cfg.dataset.name, metrics)
        return model, seen.tokenizer, metrics, mlflow_run.info.run_id

    def score(cached_model):
        with tempfile.TemporaryDirectory(prefix="kdsuite-teacher-scoring-") as scratch:
            _, _, metrics, run_id = teacher_run(Path(scratch), cached_model)
        return metrics, run_id

    # under DDP a single-process child scores (kdsuite.teacher.shared): a rank must never evaluate alone
    scorer = score if distributed.world_size() == 1 else None
    return teacher_cache.get_or_finetune(entry, models.auto_model_class(run.task), teacher_run, scorer)


def finetune_teacher_from(config_path: str) -> None:
    """The single-process child of a multi-process run (`kdsuite.teacher.shared`): build the run
    from its saved config and fetch (fine-tune and cache) its teacher."""
    cfg = OmegaConf.load(config_path)
    run = build_run(cfg)
    tracking.configure(cfg.tracking)
    prepare_teacher(run)


def train(cfg) -> float:
    """Run one configured distillation and return its main dev metric.

    SIGTERM and SIGINT end it cleanly (the MLflow run KILLED, a checkpoint being saved finished
    first); `resume=true` continues the run's newest complete checkpoint in the same MLflow run,
    and when that run already FINISHED, returns its `final_metric` and trains nothing (so re-running
    a Hydra multirun grid with `resume=true` runs only the points that did not finish). Either way
    the run's folder must have been made by this config (`run_folder.check_identity`).

    A sweep trial (`tracking.parent_run_id` set) whose settings fail their checks still leaves a
    FAILED child run under the sweep's parent, with the error, so no trial fails unseen.
    """
    with stop_on_signals():
        check_store(cfg.tracking.uri)  # first: a refused trial is recorded in this store
        try:
            check_settings(cfg)
            if cfg.get("resume"):
                done = finished_already(cfg)
                if done is not None:
                    return done
            run = build_run(cfg)
        except Exception as error:
            tracking.record_refused_trial(cfg, error)
            raise
        distributed.setup(run.student_args)
        tracking.configure(cfg.tracking)
        teacher = teacher_for_every_process(run, prepare_teacher) if run.needs_teacher else None
        rollout.prepare_data(run, teacher)  # rollout=teacher: the teacher's responses replace the data's
        run.teacher_outputs = teacher_outputs.get_or_build(run, teacher) if teacher is not None else None
        return train_student(run, teacher)


def finished_already(cfg) -> float | None:
    """The `final_metric` of the run's folder's MLflow run in this store and experiment if that
    run FINISHED, else None. Checked before any model is loaded: a finished point costs reading
    its data once (for the run's identity, which the folder must match)."""
    task = task_of(cfg.dataset)
    check_data(cfg, task)
    identity = run_folder.run_identity(cfg, data_digests(cfg, task), distributed.world_size())
    folder = run_folder.run_folder(cfg, identity)
    run_folder.check_identity(cfg, folder, identity)
    run_id = run_folder.saved_run_id(folder, cfg.tracking.uri, cfg.tracking.experiment)
    objective = tracking.finished_objective(cfg.tracking.uri, run_id, cfg.tracking.experiment) if run_id else None
    if objective is not None and cfg.get("save_student") and not (folder / "student").is_dir():
        raise ValueError(
            f"save_student=true, but the finished run in {folder} (MLflow run {run_id}) saved no student; "
            f"run without resume=true in another output_dir to train and save one, or leave save_student off"
        )
    if objective is not None:
        log.info("%s: finished already as MLflow run %s (final_metric %.4f); nothing to do",
                 folder, run_id, objective)
    return objective


def train_student(run: Run, teacher: teacher_cache.FineTunedTeacher | None) -> float:
    cfg = run.cfg
    resume_run_id = None
    if run.resume_from is not None:
        resume_run_id = run_folder.saved_run_id(run.out_dir, cfg.tracking.uri, cfg.tracking.experiment)
        log.info("resuming %s from %s", run.out_dir, run.resume_from.name)
    elif cfg.get("resume"):
        log.warning("resume=true, but %s holds no checkpoint: starting fresh", run.out_dir)

    # the pairs the loss trains on: pkd leaves out the pair of the teacher's top block
    tags = tracking.student_tags(cfg, run.loss.name, getattr(run.loss, "pairs_used", None) or run.layer_pairs, teacher)
    run_name = f"{run.loss.name}-{cfg.student.name}-{cfg.dataset.name}-s{cfg.seed}"
    with tracking.tracked_run(run_name, tags, cfg, parent_run_id=cfg.tracking.get("parent_run_id"),
                              resume_run_id=resume_run_id) as mlflow_run:
        if mlflow_run is not None:  # None on the other processes of a DDP run
            run_folder.record_identity(run.out_dir, run.identity)
            run_folder.save_run_id(run.out_dir, mlflow_run.info.run_id, cfg.tracking.uri, cfg.tracking.experiment)
        if teacher is not None:
            tracking.log_teacher_metrics(teacher.metrics)
        set_seed(cfg.seed)
        student = build_student(run, teacher.model if teacher is not None else None)
        tracking.log_model_size(models.count_parameters(student),
                                models.count_parameters(student, trainable_only=True))
        teacher_model = teacher.model if run.loss.needs_teacher else None
        callbacks = [tracking.MlflowMetricsCallback(), *pruning_callbacks(cfg, run.task.main_metric)]
        if run.resume_from is not None:  # tagged once the Trainer has loaded the checkpoint
            callbacks.append(tracking.ResumedFromStep(run_folder.checkpoint_step(run.resume_from)))
        callbacks.append(tracking.RunRecord(run))  # data inputs; the student as an MLflow model (save_student)
        trainer = build_trainer(run, student, run.loss, teacher_model, run.student_args, callbacks)
        metrics = fit(run, trainer, run.resume_from)
        if cfg.get("save_student") and distributed.is_main_process():
            student.save_pretrained(run.out_dir / "student")
            run.tokenizer.save_pretrained(run.out_dir / "student")
        objective = tracking.log_final(run.task.main_metric, metrics)
    if mlflow_run is not None:
        log.info(tracking.summary_line(run_name, run.task.metrics, metrics, teacher.metrics if teacher else None,
                                       mlflow_run.info.run_id))
    return objective
