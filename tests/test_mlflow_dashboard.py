"""What MLflow's UI is built from, read back through the MLflow API after real tiny runs: the
experiment's kind tag (the UI opens it on its runs), the train and dev sets as dataset inputs,
the student as a logged model linked to its run and score (save_student=true), system metrics
when asked for, and no Hydra plumbing among the params."""

import json

import mlflow
import pytest
from conftest import TINY_RUN

pytestmark = pytest.mark.e2e


def only_student(cfg):
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    [run] = [run for run in client.search_runs([experiment.experiment_id]) if run.data.tags["role"] == "student"]
    return client, experiment, run


@pytest.mark.slow(seconds=40)
def test_a_saved_student_is_a_model_with_its_data_and_system_metrics(make_config, monkeypatch):
    from kdsuite.data.run_data import data_digests
    from kdsuite.run import train
    from kdsuite.tracks import get_task

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    cfg = make_config(*TINY_RUN, "loss=fdd", "save_student=true", "tracking.system_metrics=true")
    objective = train(cfg)
    client, experiment, run = only_student(cfg)

    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    digests = data_digests(cfg, get_task("rte"))
    inputs = {next(tag.value for tag in item.tags if tag.key == "mlflow.data.context"): item.dataset
              for item in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["eval", "train"]
    for context, part, rows in (("train", "train", 48), ("eval", "validation", 32)):
        dataset = inputs[context]
        assert dataset.name == "rte" and dataset.digest == digests[part][:16]
        assert json.loads(dataset.profile) == {"num_rows": rows}  # after max_train/eval_samples
        assert json.loads(dataset.source)["uri"].endswith(("RTE/train.tsv", "RTE/dev.tsv")[part == "validation"])

    [model] = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert model.name == "student" and model.source_run_id == run.info.run_id
    linked = {metric.key: metric.value for metric in model.metrics}
    assert linked["final_metric"] == objective == run.data.metrics["final_metric"]
    flavors = client.download_artifacts(run.info.run_id, "config/config.yaml")  # the run's own artifacts stay
    assert flavors.endswith("config.yaml")
    mlmodel = mlflow.artifacts.load_text(f"{model.artifact_location}/MLmodel")
    assert "transformers:" in mlmodel and "text-classification" in mlmodel

    assert any(key.startswith("system/") for key in run.data.metrics)
    assert not [key for key in run.data.params if key.endswith("_partial_")]
    assert run.data.params["loss._target_"] == "kdsuite.losses.fdd.FDDLoss"


@pytest.mark.slow(seconds=15)
def test_by_default_no_model_and_no_system_metrics(make_config):
    from kdsuite.run import train

    cfg = make_config(*TINY_RUN, "loss=kd")
    train(cfg)
    client, experiment, run = only_student(cfg)
    assert client.search_logged_models(experiment_ids=[experiment.experiment_id]) == []
    assert not any(key.startswith("system/") for key in run.data.metrics)
    assert len(run.inputs.dataset_inputs) == 2
