"""`experiment=compare_methods`: one multirun over the loss families and seeds, summarised as
mean +- sd per loss in the multirun folder and in MLflow."""

import statistics
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import pytest
from conftest import REPO

from kdsuite.reports.comparison import summary_markdown, summary_rows


def fake_run(loss, value, dataset="mrpc"):
    tags = {"dataset": dataset, "student": "bert2l", "loss": loss}
    return SimpleNamespace(data=SimpleNamespace(tags=tags, metrics={"final_metric": value}))


def test_summary_means_and_sds():
    runs = [fake_run("kd", 0.8), fake_run("kd", 0.9), fake_run("kd", 0.7), fake_run("ce", 0.5)]
    rows = {row["loss"]: row for row in summary_rows(runs)}
    assert rows["kd"]["n"] == 3
    assert rows["kd"]["mean"] == pytest.approx(0.8)
    assert rows["kd"]["sd"] == pytest.approx(statistics.stdev([0.8, 0.9, 0.7]))
    assert rows["ce"]["sd"] == 0.0
    assert "| mrpc | bert2l | kd | 3 | 80.00 +- 10.00 |" in summary_markdown(list(rows.values()), "f1")


@pytest.mark.slow(seconds=20)
def test_compare_methods_multirun(tmp_path, glue_dir):
    command = [
        sys.executable, str(REPO / "run.py"), "-m", "experiment=compare_methods", "teacher=tiny",
        "dataset.max_train_samples=32", "dataset.max_eval_samples=32", "trainer.max_steps=2",
        "trainer.eval_strategy=no", "teacher.finetune.max_steps=2", "seed=1,2",
        f"dataset.data_dir={glue_dir}", f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'mr'}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdsuite")
    runs = client.search_runs([experiment.experiment_id])
    students = [run for run in runs if run.data.tags.get("role") == "student"]
    assert sorted((run.data.tags["loss"], run.data.tags["seed"]) for run in students) == sorted(
        (loss, seed) for loss in ("ce", "kd", "fdd", "codir") for seed in ("1", "2")
    )
    summary = (tmp_path / "mr" / "summary.md").read_text()
    for loss in ("ce", "kd", "fdd", "codir"):
        values = [run.data.metrics["final_metric"] for run in students if run.data.tags["loss"] == loss]
        assert f"| rte | bert2l | {loss} | 2 | {statistics.fmean(values) * 100:.2f} +- " in summary
    [comparison] = [run for run in runs if run.data.tags.get("role") == "comparison"]
    assert [item.path for item in client.list_artifacts(comparison.info.run_id)] == ["summary.md"]
