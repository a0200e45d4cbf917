"""The causal-LM comparison grid (`kdsuite.reports.causal_grid`): its record and table from rows,
and a real two-variant grid through `run.py` on the tiny causal models, resumed from its record."""

from __future__ import annotations

import math

import mlflow
import pytest
from conftest import write_dolly

from kdsuite.reports.causal_grid import (
    FIELDS,
    CausalGrid,
    main,
    read_record,
    scored_teacher,
    tables,
    update_record,
)


def row(variant, seed, rouge, loss=3.0, generation=math.nan):
    return {"variant": variant, "seed": seed, "rougeL": rouge, "val_loss": loss, "seconds_per_step": 1.5,
            "generation_seconds_per_step": generation, "generation_time_fraction": math.nan,
            "run_id": f"{variant}{seed}", "environment": ""}


GRID = CausalGrid(name="g", preset="causal_smoke", dataset="dolly", student="tiny_causal_s",
                  variants={"kd": ["loss=kd"], "gkd": ["loss=gkd"]}, real_parts=False)


def test_the_record_keeps_the_first_run_of_a_point_and_one_teacher(tmp_path):
    record = tmp_path / "g_runs.csv"
    assert update_record(record, [row("kd", 1, 0.1), row("teacher", 0, 0.3)]) == 2
    assert update_record(record, [row("kd", 1, 0.9), row("gkd", 1, 0.2), row("teacher", 0, 0.4)]) == 1
    rows = read_record(record)
    assert {(r["variant"], r["seed"], r["rougeL"]) for r in rows} == {("gkd", 1, 0.2), ("kd", 1, 0.1),
                                                                     ("teacher", 0, 0.3)}
    assert list(rows[0]) == FIELDS


def test_the_table_pairs_seeds_against_kd_and_names_what_is_missing():
    rows = [row("teacher", 0, 0.30), row("kd", 1, 0.10), row("kd", 2, 0.12), row("gkd", 1, 0.14, generation=0.5),
            row("gkd", 2, 0.15, generation=0.7)]
    text = tables(GRID, rows, ["kd", "gkd"], [1, 2, 3])
    assert "Grid: 4 of 6 runs recorded; not run yet: kd seed 3, gkd seed 3." in text
    assert "Teacher: ROUGE-L 30.00" in text
    assert "tiny_causal_s gkd | 14.50 +- 0.71 (n=2)" in text and "+3.50, p=" in text
    assert "| gkd | 2 | 3.000 +- 0.000 | 1.50 +- 0.00 | 0.60 +- 0.14 | - |" in text


@pytest.mark.e2e
@pytest.mark.slow(seconds=60)
def test_a_grid_runs_its_missing_points_through_run_py_and_resumes_from_its_record(tmp_path):
    data = write_dolly(tmp_path / "dolly.jsonl")
    grid = CausalGrid(name="g", preset="causal_smoke", dataset="dolly", student="tiny_causal_s",
                      variants={"kd": ["loss=kd"], "gkd_fast": ["loss=gkd", "rollout.lambda=1"]}, real_parts=False,
                      overrides=[f"dataset.path={data}", "trainer.max_steps=2", "teacher.finetune.max_steps=2",
                                 "dataset.generation.n_seeds=1", "trainer.bf16=false", "teacher.finetune.bf16=false",
                                 f"cache_dir={tmp_path / 'cache'}"])
    results = tmp_path / "results"
    arguments = ["--seeds", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 "--log-dir", str(tmp_path / "logs"), "--results", str(results)]
    main(grid, arguments)
    rows = {(r["variant"], r["seed"]): r for r in read_record(results / "g_runs.csv")}
    assert set(rows) == {("kd", 1), ("gkd_fast", 1), ("teacher", 0)}, rows
    assert rows["gkd_fast", 1]["generation_seconds_per_step"] > 0  # lambda 1: every step generates
    assert math.isnan(rows["kd", 1]["generation_seconds_per_step"])
    assert "Grid: 2 of 2 runs recorded." in (results / "g.md").read_text()
    # a fresh store: the record alone says both points are done, so nothing runs again
    main(grid, [*arguments[:2], "--tracking-uri", f"sqlite:///{tmp_path / 'other.db'}", *arguments[4:]])
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.log")) == ["gkd_fast-s1.log", "kd-s1.log"]
    assert "Grid: 2 of 2 runs recorded." in (results / "g.md").read_text()


def test_extra_metrics_are_record_and_cost_columns(tmp_path):
    grid = CausalGrid(name="g", preset="causal_smoke", dataset="dolly", student="tiny_causal_s",
                      variants={"ce": ["loss=ce"], "uld": ["loss=uld"]}, reference="ce",
                      extra_metrics=["train/align_coverage"])
    record = tmp_path / "g_runs.csv"
    assert update_record(record, [{**row("uld", 1, 0.1), "train/align_coverage": 0.98}, row("ce", 1, 0.1)],
                         grid.extra_metrics) == 2
    rows = {r["variant"]: r for r in read_record(record, grid.extra_metrics)}
    assert list(rows["uld"]) == grid.fields and rows["uld"]["train/align_coverage"] == 0.98
    assert math.isnan(rows["ce"]["train/align_coverage"])  # a run that logged none
    text = tables(grid, list(rows.values()), ["ce", "uld"], [1])
    assert "| `train/align_coverage` |" in text and "| 0.980 +- 0.000 |" in text


def test_every_run_is_tagged_with_its_variant(tmp_path, monkeypatch):
    """A loss preset's `loss` tag is its class's name (gkd's is kd), so the variant tag is what
    keeps a gkd run out of the kd row."""
    from kdsuite.reports import causal_grid

    commands = []
    monkeypatch.setattr(causal_grid.subprocess, "run",
                        lambda command, **_: commands.append(command) or type("Done", (), {"returncode": 0})())
    causal_grid.run_one(GRID, "gkd", 1, "sqlite:///x.db", "g", [], tmp_path)
    assert "+tracking.tags.variant=gkd" in commands[0] and "loss=gkd" in commands[0]


def test_a_grid_on_the_real_parts_stops_before_any_run_without_the_causal_extras(tmp_path, monkeypatch):
    from kdsuite.reports import causal_grid

    monkeypatch.setattr(causal_grid, "CAUSAL_EXTRAS", ("no_such_package_kdsuite",))
    monkeypatch.setattr(causal_grid, "run_one", lambda *a, **k: pytest.fail("a run started"))
    real = CausalGrid(name="g", preset="causal_real", dataset="sharegpt", student="smollm2_l6",
                      variants={"kd": ["loss=kd"]})
    with pytest.raises(SystemExit) as stop:
        main(real, ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--results", str(tmp_path)])
    assert stop.value.code == 2


# Imports first; then each process says it is ready and waits for the go, so all open the store together.
TABLE_ONLY = """
import sys, time
from pathlib import Path
from kdsuite.reports.causal_grid import CausalGrid, main
uri, ready, go, results = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
grid = CausalGrid(name="g", preset="causal_smoke", dataset="dolly", student="tiny_causal_s",
                  variants={"kd": ["loss=kd"]}, real_parts=False)
ready.touch()
while not go.exists():
    time.sleep(0.005)
main(grid, ["--table-only", "--tracking-uri", uri, "--results", results])
"""


@pytest.mark.e2e
def test_grids_started_together_on_a_new_store_create_it_once(tmp_path):
    """Two instances of one grid on one new SQLite store (each its own variants, to use both cores):
    the store is created under the lock beside its file, as run.py's runs do. Without it, alembic's
    migration raced ("expected to match one row") and both grids died before their first run."""
    import subprocess
    import sys
    import time

    uri, go = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "go"
    workers = []
    for index in range(3):
        ready, results = tmp_path / f"ready{index}", tmp_path / f"results{index}"
        results.mkdir()
        workers.append((ready, subprocess.Popen(
            [sys.executable, "-c", TABLE_ONLY, uri, str(ready), str(go), str(results)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    deadline = time.monotonic() + 120
    while not all(ready.exists() for ready, _ in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    for _, worker in workers:
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output[-3000:]


def test_a_store_in_a_missing_folder_is_refused_before_the_lock_makes_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"
    with pytest.raises(ValueError, match="the folder .*typo does not exist"):
        main(GRID, ["--table-only", "--tracking-uri", uri, "--results", str(tmp_path)])
    assert not (tmp_path / "typo").exists()


def test_the_teacher_row_is_the_run_whose_scores_the_students_logged(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("grid")

    def finished(tags):
        run = client.create_run(experiment, tags=tags)
        client.set_terminated(run.info.run_id)
        return client.get_run(run.info.run_id)

    scored = finished({"role": "teacher"})
    newer = finished({"role": "teacher"})  # another scoring of the teacher, which these students did not log
    old = finished({"role": "student"})  # a student from before the tag
    named = [finished({"role": "student", "teacher_scores_run_id": scored.info.run_id}) for _ in range(2)]
    assert scored_teacher(client, "grid", [old, *named]).info.run_id == scored.info.run_id
    assert scored_teacher(client, "grid", [old]) is None  # two teacher runs and nothing names one
    client.delete_run(newer.info.run_id)
    assert scored_teacher(client, "grid", [old]).info.run_id == scored.info.run_id  # the only one
