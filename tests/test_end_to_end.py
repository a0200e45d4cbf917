"""Whole runs on tiny random models and small real data, checked through what a user looks at:
the MLflow runs, their params, per-term metrics, final metric, status, and the teacher cache."""

import math

import mlflow
import pytest
import torch
import transformers
from conftest import TINY_RUN

from kdsuite.run import train

pytestmark = pytest.mark.e2e  # trains real runs


def runs(cfg, role=None):
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return []
    found = client.search_runs([experiment.experiment_id])
    return [run for run in found if role is None or run.data.tags.get("role") == role]


def history(cfg, run, key):
    return mlflow.MlflowClient(cfg.tracking.uri).get_metric_history(run.info.run_id, key)


def test_kd_run_is_logged_and_teacher_is_cached(make_config):
    cfg = make_config(*TINY_RUN, "loss=kd")
    objective = train(cfg)

    [teacher] = runs(cfg, "teacher")
    [student] = runs(cfg, "student")
    assert teacher.info.status == student.info.status == "FINISHED"
    assert 0.0 <= objective <= 1.0
    assert student.data.metrics["final_metric"] == pytest.approx(objective)
    assert student.data.metrics["final/accuracy"] == pytest.approx(objective)
    assert "teacher/accuracy" in student.data.metrics
    assert "final_metric" in teacher.data.metrics

    params = student.data.params
    assert params["loss.alpha"] == "0.5" and params["loss.temperature"] == "2.0"
    assert params["dataset.name"] == "rte" and params["student.num_layers"] == "2"
    assert params["trainer.max_steps"] == "4"
    tags = student.data.tags
    assert (tags["loss"], tags["student"], tags["teacher"], tags["dataset"], tags["seed"]) == (
        "kd", "bert2l", "tiny", "rte", "42"
    )
    assert tags["git_commit"] and tags["teacher_run_id"] == teacher.info.run_id
    assert tags["environment"].startswith(f"torch {torch.__version__}, transformers {transformers.__version__}, ")

    for term in ("train/ce", "train/kd", "train/loss"):
        steps = [point.step for point in history(cfg, student, term)]
        assert steps == [2, 4], term  # logging_steps=2 over 4 steps
        assert all(math.isfinite(point.value) for point in history(cfg, student, term))
    assert history(cfg, student, "epoch/kd")
    client = mlflow.MlflowClient(cfg.tracking.uri)
    artifacts = [item.path for item in client.list_artifacts(student.info.run_id, "config")]
    assert "config/config.yaml" in artifacts
    config_text = client.download_artifacts(student.info.run_id, "config/config.yaml")
    assert "kdsuite.losses.kd.KDLoss" in open(config_text).read()

    # A second run on the same teacher x dataset reuses the cached teacher: no new teacher run.
    cfg_ce = make_config(*TINY_RUN, "loss=ce")
    train(cfg_ce)
    assert len(runs(cfg, "teacher")) == 1
    ce_run = next(run for run in runs(cfg, "student") if run.data.tags["loss"] == "ce")
    assert ce_run.data.tags["teacher_run_id"] == teacher.info.run_id
    assert history(cfg, ce_run, "train/ce") and not history(cfg, ce_run, "train/kd")


def test_regression_task_runs_with_mse(make_config):
    overrides = [item for item in TINY_RUN if not item.startswith("dataset=")]
    cfg = make_config(*overrides, "dataset=stsb", "loss=kd")
    objective = train(cfg)
    [student] = runs(cfg, "student")
    assert student.data.metrics["final/spearman"] == pytest.approx(objective)
    assert "final/pearson" in student.data.metrics
    assert history(cfg, student, "train/kd")


def test_random_student_with_ce_needs_no_teacher(make_config):
    cfg = make_config(*TINY_RUN, "loss=ce", "student.init=random")
    train(cfg)
    assert runs(cfg, "teacher") == []
    assert [run.info.status for run in runs(cfg, "student")] == ["FINISHED"]


def test_nan_loss_fails_the_run(make_config):
    cfg = make_config(*TINY_RUN, "loss._target_=failing_losses.NaNLoss")
    with pytest.raises(FloatingPointError, match="non-finite loss at step 2"):
        train(cfg)
    [student] = runs(cfg, "student")
    assert student.info.status == "FAILED"
    assert student.data.tags["error"].startswith("FloatingPointError: non-finite loss at step 2")
    client = mlflow.MlflowClient(cfg.tracking.uri)
    trace = client.download_artifacts(student.info.run_id, "traceback.txt")
    assert "FloatingPointError" in open(trace).read()


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("dataset.name=mnli", ValueError, "unknown task 'mnli'"),
        ("dataset=qnli", FileNotFoundError, "QNLI/train.tsv"),
        ("student=bert6l", ValueError, "has 6 layers but the teacher has 4"),
        ("mapping=custom", Exception, "pairs"),
        ("loss.alpha=2.0", ValueError, "loss.alpha=2.0"),
        ("loss.temperature=nan", ValueError, "loss.temperature=nan is not a finite number"),
        ("trainer.learning_rate=inf", ValueError, "trainer.learning_rate=inf is not a finite number"),
        ("+trainer.lerning_rate=1e-4", ValueError, r"trainer.lerning_rate \(did you mean trainer.learning_rate\?\)"),
        ("+teacher.finetune.warmup_step=3", ValueError, r"teacher.finetune.warmup_step \(did you mean"),
        ("loss=codir", ValueError, "codir needs lambda_crd >= 0, tau > 0"),
    ],
)
def test_bad_config_fails_before_any_work(make_config, tmp_path, override, error, message):
    overrides = list(TINY_RUN) + [override]
    if override == "mapping=custom":
        overrides.append("mapping.pairs=[[1,9]]")
        message = "teacher layer 9 is out of range 1..4"
    if override == "loss=codir":
        overrides.append("loss.tau=0")
    cfg = make_config(*overrides)
    with pytest.raises(error, match=message):
        train(cfg)
    assert not (tmp_path / "cache").exists()  # no teacher was fine-tuned
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was opened


def test_loss_settings_are_checked_before_the_data_is_loaded(make_config, monkeypatch):
    """The data step can be a hub download: a bad loss setting must not wait for it."""

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the loss settings were checked")

    monkeypatch.setattr("kdsuite.run.assembly.load_run_data", no_data)
    with pytest.raises(ValueError, match="loss.temperature=-1.0 must be > 0"):
        train(make_config(*TINY_RUN, "loss.temperature=-1.0"))


@pytest.mark.parametrize(
    ("loss", "terms"),
    [("fdd", ["ce", "kd", "traj", "delta"]), ("codir", ["ce", "kd", "crd"])],
)
def test_intermediate_layer_losses_log_every_term(make_config, loss, terms):
    cfg = make_config(*TINY_RUN, f"loss={loss}")
    train(cfg)
    [student] = runs(cfg, "student")
    assert student.info.status == "FINISHED" and student.data.tags["loss"] == loss
    assert student.data.tags["layer_pairs"] == "[(1, 2), (2, 4)]"
    for term in terms:
        points = history(cfg, student, f"train/{term}")
        assert [point.step for point in points] == [2, 4], term
        assert all(math.isfinite(point.value) for point in points)


def test_fdd_projection_trains_and_is_saved_with_the_student(make_config):
    from safetensors.torch import load_file

    cfg = make_config(
        *TINY_RUN, "loss=fdd", "student.init=random", "save_student=true",
        "+student.config_overrides.hidden_size=16", "+student.config_overrides.intermediate_size=32",
    )
    train(cfg)
    saved = load_file(f"{cfg.output_dir}/student/model.safetensors")
    assert tuple(saved["distillation_loss.projection.weight"].shape) == (32, 16)


def test_fdd_refuses_a_mapping_that_is_not_increasing(make_config):
    cfg = make_config(*TINY_RUN, "loss=fdd", "mapping=custom", "mapping.pairs=[[1,3],[2,3]]")
    with pytest.raises(ValueError, match="strictly increasing"):
        train(cfg)
    assert runs(cfg) == []


def test_fdd_uniform_too_deep_names_the_largest_fit(make_config):
    cfg = make_config(*TINY_RUN, "loss=fdd", "mapping=fdd_uniform")
    with pytest.raises(ValueError, match="largest L_D that fits is 1"):
        train(cfg)
