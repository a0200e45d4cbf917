"""`kdsuite-report` on a store of real runs (tiny models, 2 losses x 2 seeds, STS-B so the metric is
continuous): its table and CSV against values computed here from the MLflow API, the console
script, and one line for each kind of bad input."""

import csv
import statistics
import subprocess

import mlflow
import pytest
from conftest import CONF_DIR, TINY_RUN, glue_path
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from scipy.stats import ttest_rel

from kdsuite.cli.report import main

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("report_store")]

LOSSES, SEEDS = ("kd", "fdd"), (1, 2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store holding 4 finished student runs (kd, fdd x seeds 1, 2) and their teacher. (Not ce
    against kd: on the tiny teacher kd's term is ~1e-4, kd is then ce at half the scale, and Adam
    takes the same steps, so both gave the same metric to the last bit.)"""
    from kdsuite.run import train

    root = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for loss in LOSSES:
        for seed in SEEDS:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="config", overrides=[*TINY_RUN, "dataset=stsb", f"loss={loss}",
                                                               f"seed={seed}"])
            with open_dict(cfg):
                cfg.dataset.data_dir = str(glue_path())
                cfg.cache_dir = str(root / "cache")
                cfg.output_dir = str(root / f"out-{loss}-{seed}")
                cfg.tracking.uri = uri
            train(cfg)
    mlflow.set_tracking_uri(None)
    return root, uri


def students(uri):
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("kdsuite")
    return [run for run in client.search_runs([experiment.experiment_id]) if run.data.tags["role"] == "student"]


@pytest.mark.slow(seconds=60)
def test_table_and_csv_match_the_runs(store, capsys):
    root, uri = store
    assert main(["--tracking-uri", uri, "--csv", str(root / "table.csv")]) == 0
    table = capsys.readouterr().out

    runs = students(uri)
    assert len(runs) == 4 and {run.data.tags["main_metric"] for run in runs} == {"spearman"}
    value = {(run.data.tags["loss"], int(run.data.tags["seed"])): run.data.metrics["final_metric"] for run in runs}
    teacher = {run.data.metrics["teacher/spearman"] for run in runs}
    assert len(teacher) == 1
    fdd, kd = [value["fdd", seed] for seed in SEEDS], [value["kd", seed] for seed in SEEDS]
    assert fdd != kd
    difference = statistics.fmean(a - b for a, b in zip(fdd, kd))
    p_value = ttest_rel(fdd, kd).pvalue

    assert "### stsb, bert2l\n" in table
    assert "| loss | runs | spearman (x100), mean +- sd | vs kd: diff, p (pairs) |" in table
    assert f"| teacher | | {teacher.pop() * 100:.2f} | |" in table
    assert f"| kd | 2 | {statistics.fmean(kd) * 100:.2f} +- {statistics.stdev(kd) * 100:.2f} | reference |" in table
    assert (f"| fdd | 2 | {statistics.fmean(fdd) * 100:.2f} +- {statistics.stdev(fdd) * 100:.2f} | "
            f"{difference * 100:+.2f}, p={p_value:.3g} (2) |") in table
    assert table.index("| kd |") < table.index("| fdd |")  # the loss-family order

    rows = {row["label"]: row for row in csv.DictReader(open(root / "table.csv"))}
    assert float(rows["fdd"]["mean"]) == pytest.approx(statistics.fmean(fdd), abs=1e-12)
    assert float(rows["fdd"]["sd"]) == pytest.approx(statistics.stdev(fdd), abs=1e-12)
    assert float(rows["fdd"]["difference"]) == pytest.approx(difference, abs=1e-12)
    assert float(rows["fdd"]["p_value"]) == pytest.approx(p_value, rel=1e-9)
    assert rows["kd"]["p_value"] == "" and rows["fdd"]["pairs"] == "2" and rows["fdd"]["metric"] == "spearman"


def test_reference_filter_and_png(store, capsys):
    root, uri = store
    assert main(["--tracking-uri", uri, "--reference", "fdd", "--filter", "tags.seed = '1'",
                 "--png", str(root / "chart.png")]) == 0
    table = capsys.readouterr().out
    one = {run.data.tags["loss"]: run.data.metrics["final_metric"] for run in students(uri)
           if run.data.tags["seed"] == "1"}
    assert f"| fdd | 1 | {one['fdd'] * 100:.2f} +- 0.00 | reference |" in table
    assert f"| kd | 1 | {one['kd'] * 100:.2f} +- 0.00 | - (1) |" in table  # one pair: no test
    assert (root / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_console_script_prints_the_same_table(store, capsys):
    _, uri = store
    main(["--tracking-uri", uri])
    expected = capsys.readouterr().out
    result = subprocess.run(["kdsuite-report", "--tracking-uri", uri], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == expected


def one_line_error(capsys, *arguments: str) -> str:
    assert main(list(arguments)) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("kdsuite-report: ")
    return captured.err


def test_bad_input_is_one_line_naming_it(store, tmp_path, capsys):
    _, uri = store
    missing = tmp_path / "nowhere.db"
    assert "no MLflow store at" in one_line_error(capsys, "--tracking-uri", f"sqlite:///{missing}")
    assert not missing.exists()  # and none was created
    assert "cannot read the MLflow store at nope://x" in one_line_error(capsys, "--tracking-uri", "nope://x")
    error = one_line_error(capsys, "--tracking-uri", uri, "--experiment", "glue")
    assert "no experiment named 'glue'" in error and "kdsuite" in error  # names the ones there
    assert "no finished student runs" in one_line_error(capsys, "--tracking-uri", uri, "--filter",
                                                        "tags.dataset = 'mrpc'")
    assert "bad --filter" in one_line_error(capsys, "--tracking-uri", uri, "--filter", "tags.dataset ~ 1")
    error = one_line_error(capsys, "--tracking-uri", uri, "--reference", "codir")
    assert "--reference codir" in error and "fdd, kd" in error


def test_two_runs_of_one_point_are_refused_naming_what_differs(tmp_path, capsys):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("kdsuite")
    for learning_rate, value in (("0.0003", 0.5), ("0.0001", 0.4), ("0.0003", 0.6)):
        run = client.create_run(experiment_id, tags={"role": "student", "dataset": "rte", "student": "bert2l",
                                                     "loss": "kd", "seed": "1", "main_metric": "accuracy"})
        client.log_param(run.info.run_id, "trainer.learning_rate", learning_rate)
        client.log_metric(run.info.run_id, "final_metric", value)
        client.set_terminated(run.info.run_id)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    capsys.readouterr()  # MLflow's own lines about creating the store
    error = one_line_error(capsys, "--tracking-uri", uri)
    assert "rte, bert2l, kd, seed 1" in error and "trainer.learning_rate" in error
    assert main(["--tracking-uri", uri, "--filter", "params.`trainer.learning_rate` = '0.0001'"]) == 0
    assert "| kd | 1 | 40.00 +- 0.00 | reference |" in capsys.readouterr().out
