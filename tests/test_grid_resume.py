"""The GLUE grid's engine (`experiments/grids/glue_grid.sh`): a Hydra multirun with `resume=true`, its
runs spread over processes by `hydra/launcher=processes`. Re-running it trains only the points
that did not finish: a finished point returns its recorded result and adds no MLflow run; a point
in the grid's CSV record is not run at all."""

import subprocess
import sys

import pytest
from conftest import REPO, TINY_RUN
from sweep_runs import mlflow_runs, sweep, sweep_env

from kdsuite.reports.results_table import RunResult, read_record, update_record

GRID = ["resume=true", "teacher.outputs=cached", "seed=1", "hydra/launcher=processes", "hydra.launcher.n_jobs=2"]


def student_runs(folder):
    _, runs = mlflow_runs(folder)
    return {run.data.tags["loss"]: run for run in runs if run.data.tags.get("role") == "student"}


@pytest.mark.slow(seconds=50)
def test_rerun_of_a_grid_trains_only_the_unfinished_points(tmp_path, glue_dir):
    # a grid cut short after its first point; that one point runs in the multirun's own process
    # (n_jobs=1: no worker to start), the re-run below spreads its points over two
    sweep(tmp_path, glue_dir, "loss=ce", *GRID[:-1], "hydra.launcher.n_jobs=1")
    [first] = student_runs(tmp_path).values()
    assert first.info.status == "FINISHED"

    sweep(tmp_path, glue_dir, "loss=ce,kd", *GRID)
    runs = student_runs(tmp_path)
    assert sorted(runs) == ["ce", "kd"]  # one run per point: ce was not trained again
    assert runs["ce"].info.run_id == first.info.run_id
    assert runs["ce"].info.end_time == first.info.end_time
    assert runs["kd"].info.status == "FINISHED" and "final_metric" in runs["kd"].data.metrics


@pytest.mark.slow(seconds=45)
def test_grid_script_trains_only_the_points_its_record_lacks(tmp_path, glue_dir):
    """`experiments/grids/glue_grid.sh` on a new store: the point an earlier session recorded (its store
    gone) is not trained again; the one it lacks is, and compare_glue adds it to the record."""
    for kind in ("grids", "reports"):
        (tmp_path / "experiments" / kind).mkdir(parents=True)
    for name in ("grids/glue_grid.sh", "reports/compare_glue.py"):
        (tmp_path / "experiments" / name).symlink_to(REPO / "experiments" / name)
    for name in ("run.py", "conf"):
        (tmp_path / name).symlink_to(REPO / name)
    record = tmp_path / "results" / "glue_runs.csv"
    update_record(record, [RunResult("rte", "bert2l", "ce", 1, 0.5, "from-an-earlier-store")])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = [o for o in TINY_RUN if not o.startswith(("student=", "dataset="))]
    env = sweep_env(TASKS="rte", LOSSES="ce,kd", SEEDS="1", RECIPE=" ".join(recipe), RECORD=str(record),
                    URI=uri, EXPERIMENT="kdsuite", GLUE_DIR=str(glue_dir), KDSUITE_CACHE=str(tmp_path / "cache"))
    grid = subprocess.run(["bash", str(tmp_path / "experiments" / "grids" / "glue_grid.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert grid.returncode == 0, (grid.stdout + grid.stderr)[-4000:]
    [kd] = student_runs(tmp_path).values()  # ce was in the record: only kd trained
    assert kd.data.tags["loss"] == "kd" and kd.info.status == "FINISHED"

    compare_glue = tmp_path / "experiments" / "reports" / "compare_glue.py"
    table = subprocess.run([sys.executable, str(compare_glue), "--tracking-uri", uri,
                            "--experiment", "kdsuite", "--tasks", "rte", "--losses", "ce", "kd",
                            "--results", str(record.parent)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-4000:]
    assert [(r.loss, r.run_id) for r in read_record(record)] == [
        ("ce", "from-an-earlier-store"), ("kd", kd.info.run_id)]
    assert "| bert2l ce | 50.00 +- 0.00 (n=1) |" in (record.parent / "glue.md").read_text()


def test_grid_scripts_stop_before_training_where_bf16_would_be_emulated(monkeypatch, capsys):
    """`kdsuite.bf16_check`, which glue.sh, glue_grid.sh, tuned.sh and recipe.sh run first: a recipe
    pinning bf16 stops them (exit 2, naming the setting) on a machine with no GPU and no oneDNN
    bf16 kernels; the last setting wins; ALLOW_EMULATED_BF16=1 lets them go on."""
    import torch

    import kdsuite.trainer
    from kdsuite import bf16_check as check_bf16

    recipe = ["trainer.num_train_epochs=3", "trainer.bf16=true"]
    assert check_bf16.emulated_bf16(recipe, has_gpu=False, cpu_bf16_kernels=False)
    assert check_bf16.emulated_bf16(["++trainer.bf16=True"], has_gpu=False, cpu_bf16_kernels=False)
    assert not check_bf16.emulated_bf16(recipe, has_gpu=True, cpu_bf16_kernels=False)
    assert not check_bf16.emulated_bf16(recipe, has_gpu=False, cpu_bf16_kernels=True)
    assert not check_bf16.emulated_bf16([*recipe, "trainer.bf16=false"], has_gpu=False, cpu_bf16_kernels=False)
    assert not check_bf16.emulated_bf16(["trainer.num_train_epochs=3"], has_gpu=False, cpu_bf16_kernels=False)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(kdsuite.trainer, "cpu_has_bf16_kernels", lambda: False)
    monkeypatch.setattr(sys, "argv", ["check_bf16.py", *recipe])
    monkeypatch.delenv("ALLOW_EMULATED_BF16", raising=False)
    with pytest.raises(SystemExit) as stopped:
        check_bf16.main()
    assert stopped.value.code == 2 and "trainer.bf16=true" in capsys.readouterr().err
    monkeypatch.setenv("ALLOW_EMULATED_BF16", "1")
    check_bf16.main()  # goes on, with a warning
    assert "running anyway" in capsys.readouterr().err
