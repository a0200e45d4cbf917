"""A new loss family is one module plus one YAML: a loss defined under tests/ (`extra_losses.py`)
with its YAML on a Hydra search path runs through `run.py`, live and with cached teacher outputs,
and lands in MLflow with its own terms, while nothing under src/ or conf/ knows its name."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from conftest import REPO, TINY_RUN
from sweep_runs import sweep_env

pytestmark = pytest.mark.e2e


def test_nothing_in_src_or_conf_names_the_new_family():
    named = subprocess.run(["git", "grep", "-l", "-i", "logit_mse\\|LogitMSE", "--", "src", "conf"],
                           cwd=REPO, capture_output=True, text=True)
    assert named.stdout == ""


@pytest.mark.slow(seconds=25)
def test_a_loss_from_outside_the_package_runs_live_and_cached(tmp_path, glue_dir):
    command = [
        sys.executable, str(REPO / "run.py"), "-m", f"hydra.searchpath=[file://{REPO / 'tests' / 'conf'}]",
        *TINY_RUN, "loss=logit_mse", "teacher.outputs=live,cached", f"dataset.data_dir={glue_dir}",
        f"cache_dir={tmp_path / 'cache'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=sweep_env(OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdsuite")
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'student'")
    assert sorted(run.data.params["teacher.outputs"] for run in runs) == ["cached", "live"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["loss"] == "logit_mse"
        assert {"train/ce", "train/logit_mse", "final_metric"} <= set(run.data.metrics)
    stores = list((tmp_path / "cache" / "teachers").glob("*/outputs/*/manifest.json"))
    assert len(stores) == 1  # the cached run built the store of what the loss declared: the logits
