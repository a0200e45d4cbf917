"""The GLUE table builder on a real (SQLite) MLflow store filled by the test: means, sds, the
paired test against kd, the resume logic (causal_real.py) and the CSV record (one row per point,
re-runs handed back, what a grid still lacks); and the committed GLUE and ablation tables rebuilt
from the committed CSV record, byte for byte."""

import csv
import statistics

import mlflow
import pytest
from conftest import REPO
from scipy.stats import ttest_rel

from kdsuite.reports.markdown import MARKER
from kdsuite.reports.results_table import (
    RunResult,
    build_table,
    finished_runs,
    paired_test,
    pending,
    read_record,
    recipe_point,
    recipe_table,
    run_results,
    teacher_scores,
    update_record,
)
from kdsuite.tracks import get_task

RESULTS = REPO / "experiments" / "results"
GLUE_TASKS = ["rte", "mrpc", "stsb", "cola", "sst2"]

VALUES = {  # (task, loss) -> values for seeds 1, 2, 3
    ("rte", "kd"): [0.60, 0.62, 0.58], ("rte", "fdd"): [0.63, 0.66, 0.60],
    ("mrpc", "kd"): [0.80, 0.82, 0.81], ("mrpc", "fdd"): [0.81, 0.84, 0.81],
}

TEACHER = {"rte": 0.65, "mrpc": 0.86}


@pytest.fixture
def store(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("glue")
    for (task, loss), values in VALUES.items():
        for seed, value in zip((1, 2, 3), values):
            run = client.create_run(experiment_id, tags={
                "role": "student", "dataset": task, "student": "bert2l", "loss": loss, "seed": str(seed)})
            client.log_metric(run.info.run_id, "final_metric", value)
            client.log_metric(run.info.run_id, f"teacher/{get_task(task).main_metric}", TEACHER[task])
            client.set_terminated(run.info.run_id)
    failed = client.create_run(experiment_id, tags={
        "role": "student", "dataset": "rte", "student": "bert2l", "loss": "ce", "seed": "1"})
    client.log_metric(failed.info.run_id, "final_metric", 0.9)  # failed after scoring: still not done
    client.set_terminated(failed.info.run_id, status="FAILED")
    ablation = client.create_run(experiment_id, tags={
        "role": "student", "dataset": "rte", "student": "bert2l", "loss": "fdd", "seed": "1",
        "variant": "fdd_traj"})
    client.log_metric(ablation.info.run_id, "final_metric", 0.5)
    client.set_terminated(ablation.info.run_id)
    return client, experiment_id


def finished(client, experiment_id):
    """The suite's own query of finished student runs (the one the resume logic uses)."""
    return finished_runs(client, client.get_experiment(experiment_id).name)


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
    grid = [(task, "bert2l", loss, seed)
            for task in ("rte", "mrpc") for loss in ("ce", "kd", "fdd") for seed in (1, 2, 3)]
    todo = pending(grid, run_results(finished(*store)))
    assert sorted(todo) == sorted((task, "bert2l", "ce", seed) for task in ("rte", "mrpc") for seed in (1, 2, 3))


def test_variant_tag_labels_an_ablation_run_apart_from_its_loss(store):
    results = run_results(finished(*store))
    assert [r.value for r in results if r.loss == "fdd_traj"] == [0.5]
    assert 0.5 not in [r.value for r in results if r.loss == "fdd"]
    assert pending([("rte", "bert2l", "fdd_traj", 1), ("rte", "bert2l", "fdd_traj", 2)], results) == [
        ("rte", "bert2l", "fdd_traj", 2)]


def test_csv_record_holds_each_point_once_and_reads_back(store, tmp_path):
    results = run_results(finished(*store))
    path = tmp_path / "glue_runs.csv"
    assert len(update_record(path, results[:5]).added) == 5
    assert len(update_record(path, results).added) == 8  # only the new ones
    assert update_record(path, results) == update_record(path, [])  # nothing new, no re-run
    assert sorted(read_record(path), key=lambda r: r.run_id) == sorted(results, key=lambda r: r.run_id)
    assert teacher_scores(read_record(path)) == TEACHER
    with open(path) as handle:  # what any CSV reader sees
        assert next(csv.reader(handle)) == ["run_id", "dataset", "student", "loss", "seed", "value", "teacher",
                                        "environment"]


def test_a_rerun_of_a_recorded_point_is_handed_back_not_added(store, tmp_path):
    results = run_results(finished(*store))
    path = tmp_path / "glue_runs.csv"
    update_record(path, results)
    first = next(r for r in results if r.point == ("rte", "bert2l", "kd", 1))
    again = RunResult(*first.point, value=first.value + 0.01, run_id="another-store", teacher=first.teacher)
    update = update_record(path, [again])
    assert update.added == [] and update.repeats == [(first, again)]
    assert [r.value for r in read_record(path) if r.point == first.point] == [first.value]


def test_an_older_record_without_teacher_scores_gains_the_column(tmp_path):
    path = tmp_path / "glue_runs.csv"
    path.write_text("run_id,dataset,student,loss,seed,value\nold,rte,bert2l,kd,1,0.5\n")
    new = RunResult("rte", "bert2l", "fdd", 1, 0.6, "new", teacher=0.65)
    update_record(path, [new])
    assert read_record(path) == [RunResult("rte", "bert2l", "kd", 1, 0.5, "old"), new]
    assert teacher_scores(read_record(path)) == {"rte": 0.65}


def test_runs_of_two_teachers_for_one_task_are_refused():
    results = [RunResult("rte", "bert2l", "kd", 1, 0.5, "a", teacher=0.57),
               RunResult("rte", "bert2l", "kd", 2, 0.5, "b", teacher=0.60)]
    with pytest.raises(ValueError, match=r"different teachers: \{'rte': \[0.57, 0.6\]\}"):
        teacher_scores(results)


def test_the_grid_trains_only_the_points_the_record_lacks():
    from kdsuite.reports.grid_points import missing_multiruns, task_names

    names = task_names(["rte", "mrpc", "sst2_8k"])
    assert names == {"rte": "rte", "mrpc": "mrpc", "sst2_8k": "sst2"}
    record = [RunResult("rte", "bert2l", loss, 1, 0.5) for loss in ("ce", "kd")] + [
        RunResult("sst2", "bert2l", loss, 1, 0.8) for loss in ("ce", "kd")] + [
        RunResult("mrpc", "bert2l", "fdd_traj", 1, 0.7)]
    datasets, losses = ["rte", "mrpc", "sst2_8k"], ["ce", "kd", "fdd"]
    assert missing_multiruns(record, datasets, losses, 1, "bert2l", None, names) == [
        "dataset=rte,sst2_8k loss=fdd", "dataset=mrpc loss=ce,kd,fdd"]
    assert missing_multiruns(record, datasets, losses, 2, "bert2l", None, names) == [  # a new seed: one multirun
        "dataset=rte,mrpc,sst2_8k loss=ce,kd,fdd"]
    assert missing_multiruns(record, datasets, losses, 1, "bert4l", None, names) == [
        "dataset=rte,mrpc,sst2_8k loss=ce,kd,fdd"]
    assert missing_multiruns(record, ["rte", "mrpc"], ["fdd"], 1, "bert2l", "fdd_traj", names) == [
        "dataset=rte loss=fdd"]  # a variant is recorded under its own label
    full = record + [RunResult(d, "bert2l", "fdd", 1, 0.5) for d in ("rte", "sst2")] + [
        RunResult("mrpc", "bert2l", loss, 1, 0.5) for loss in losses]
    assert missing_multiruns(full, datasets, losses, 1, "bert2l", None, names) == []


@pytest.mark.parametrize("name, record, student, tasks, losses", [
    ("glue_1epoch", "glue_1epoch_runs.csv", "bert2l", GLUE_TASKS, ["ce", "kd", "fdd", "codir"]),
    ("ablation_1epoch", "glue_1epoch_runs.csv", "bert2l", ["rte", "mrpc", "stsb"],
     ["kd", "fdd_traj", "fdd_delta", "fdd"]),
    ("glue", "glue_runs.csv", "bert2l", GLUE_TASKS, ["ce", "kd", "fdd", "codir"]),
    ("glue", "glue_runs.csv", "bert4l", ["rte", "mrpc", "stsb"], ["ce", "kd", "fdd", "codir"]),
    ("ablation", "glue_runs.csv", "bert2l", ["rte", "mrpc", "stsb"], ["kd", "fdd_traj", "fdd_delta", "fdd"]),
])
def test_committed_table_is_rebuilt_from_the_committed_record(name, record, student, tasks, losses):
    """What `compare_glue.py` writes below the marker for one student, from the CSV record instead
    of MLflow: the same text as the committed file. The teacher's scores come from the record; a
    record written before it kept them (the 1-epoch one) has none, and then they are read off the
    committed teacher row."""
    tables = (RESULTS / f"{name}.md").read_text().split(MARKER + "\n\n")[1].split("\n\n")
    committed = next(table for table in tables if f"\n| {student} " in table) + "\n"
    results = [r for r in read_record(RESULTS / record) if r.dataset in tasks and r.student == student]
    teacher = teacher_scores(results)
    if not teacher:
        cells = committed.splitlines()[2].split(" | ")[1:1 + len(tasks)]
        teacher = {task: float(cell) / 100 for task, cell in zip(tasks, cells)}
    names = {task: get_task(task).main_metric for task in tasks}
    assert build_table(results, teacher, tasks, losses, names) == committed


def test_recipe_table_reports_each_epoch_per_learning_rate(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("recipe")
    curves = {  # (loss, lr, epochs, seed) -> dev Spearman after each epoch
        ("ce", 3e-4, 3, 1): [0.50, 0.66, 0.68], ("ce", 3e-4, 3, 2): [0.40, 0.60, 0.70],
        ("ce", 1e-4, 3, 1): [0.18, 0.30, 0.35], ("kd", 3e-4, 3, 1): [0.55, 0.70, 0.72],
        ("ce", 1e-4, 1, 1): [0.19],  # another epoch count: not in a 3-epoch table
    }
    for (loss, lr, epochs, seed), values in curves.items():
        run = client.create_run(experiment_id, tags={
            "role": "student", "dataset": "stsb", "student": "bert2l", "loss": loss, "seed": str(seed)})
        client.log_param(run.info.run_id, "trainer.learning_rate", str(lr))
        client.log_param(run.info.run_id, "trainer.num_train_epochs", str(epochs))
        for step, value in zip((180, 360, 540), values):
            client.log_metric(run.info.run_id, "eval/spearman", value, step=step)
        client.set_terminated(run.info.run_id)
    runs = client.search_runs([experiment_id])
    assert ("stsb", "bert2l", "ce", 3e-4, 3, 2) in {recipe_point(run) for run in runs}
    rows = recipe_table(client, runs, ["stsb"], ["bert2l"], epochs=3).splitlines()[2:]
    assert rows == [
        "| stsb (spearman) | bert2l | ce | 0.0001 | 1 | 18.00 | 30.00 | 35.00 |",
        f"| stsb (spearman) | bert2l | ce | 0.0003 | 2 | 45.00 +- {statistics.stdev([50, 40]):.2f} | "
        f"63.00 +- {statistics.stdev([66, 60]):.2f} | 69.00 +- {statistics.stdev([68, 70]):.2f} |",
        "| stsb (spearman) | bert2l | kd | 0.0003 | 1 | 55.00 | 70.00 | 72.00 |",
    ]
