"""The GLUE table builder on a real (SQLite) MLflow store filled by the test: means, sds, the
paired test against kd, the resume logic and the CSV record."""

import statistics

import mlflow
import pytest
from scipy.stats import ttest_rel

from kdsuite.results_table import append_csv, build_table, paired_test, pending, read_csv, run_results

VALUES = {  # (task, loss) -> values for seeds 1, 2, 3
    ("rte", "kd"): [0.60, 0.62, 0.58], ("rte", "fdd"): [0.63, 0.66, 0.60],
    ("mrpc", "kd"): [0.80, 0.82, 0.81], ("mrpc", "fdd"): [0.81, 0.84, 0.81],
}


@pytest.fixture
def store(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("glue")
    for (task, loss), values in VALUES.items():
        for seed, value in zip((1, 2, 3), values):
            run = client.create_run(experiment_id, tags={
                "role": "student", "dataset": task, "student": "bert2l", "loss": loss, "seed": str(seed)})
            client.log_metric(run.info.run_id, "final_metric", value)
            client.set_terminated(run.info.run_id)
    failed = client.create_run(experiment_id, tags={
        "role": "student", "dataset": "rte", "student": "bert2l", "loss": "ce", "seed": "1"})
    client.set_terminated(failed.info.run_id, status="FAILED")  # no metric: never counted
    ablation = client.create_run(experiment_id, tags={
        "role": "student", "dataset": "rte", "student": "bert2l", "loss": "fdd", "seed": "1",
        "variant": "fdd_traj"})
    client.log_metric(ablation.info.run_id, "final_metric", 0.5)
    client.set_terminated(ablation.info.run_id)
    return client, experiment_id


def finished(client, experiment_id):
    return client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'")


def test_means_sds_and_paired_test(store):
    results = run_results(finished(*store))
    assert len(results) == 13
    table = build_table(results, {"rte": 0.65, "mrpc": 0.86}, ["rte", "mrpc"], ["kd", "fdd"],
                        {"rte": "accuracy", "mrpc": "f1"})
    fdd_rte = VALUES["rte", "fdd"]
    assert f"{statistics.fmean(fdd_rte) * 100:.2f} +- {statistics.stdev(fdd_rte) * 100:.2f} (n=3)" in table
    assert "| teacher | 65.00 | 86.00 | 75.50 | |" in table
    kd_avg = (statistics.fmean(VALUES["rte", "kd"]) + statistics.fmean(VALUES["mrpc", "kd"])) / 2
    assert f"| {kd_avg * 100:.2f} | reference |" in table

    difference, p_value, pairs = paired_test(results, "bert2l", "fdd")
    ours = VALUES["rte", "fdd"] + VALUES["mrpc", "fdd"]
    reference = VALUES["rte", "kd"] + VALUES["mrpc", "kd"]
    assert pairs == 6
    assert difference == pytest.approx(statistics.fmean(a - b for a, b in zip(ours, reference)))
    assert p_value == pytest.approx(ttest_rel(ours, reference).pvalue)
    assert f"{difference * 100:+.2f}, p={p_value:.3g} (6)" in table


def test_resume_skips_finished_runs_only(store):
    grid = [(task, "bert2l", loss, seed) for task in ("rte", "mrpc") for loss in ("ce", "kd", "fdd") for seed in (1, 2, 3)]
    todo = pending(grid, run_results(finished(*store)))
    assert sorted(todo) == sorted((task, "bert2l", "ce", seed) for task in ("rte", "mrpc") for seed in (1, 2, 3))


def test_variant_tag_labels_an_ablation_run_apart_from_its_loss(store):
    results = run_results(finished(*store))
    assert [r.value for r in results if r.loss == "fdd_traj"] == [0.5]
    assert 0.5 not in [r.value for r in results if r.loss == "fdd"]
    assert pending([("rte", "bert2l", "fdd_traj", 1), ("rte", "bert2l", "fdd_traj", 2)], results) == [
        ("rte", "bert2l", "fdd_traj", 2)]


def test_csv_record_appends_once_and_reads_back(store, tmp_path):
    results = run_results(finished(*store))
    path = tmp_path / "glue_runs.csv"
    assert append_csv(path, results[:5]) == 5
    assert append_csv(path, results) == 8  # only the new ones
    assert append_csv(path, results) == 0
    assert sorted(read_csv(path), key=lambda r: r.run_id) == sorted(results, key=lambda r: r.run_id)
