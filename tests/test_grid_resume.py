"""The GLUE grid's engine (`experiments/glue_grid.sh`): a Hydra multirun with `resume=true`, its
runs spread over processes by `hydra/launcher=processes`. Re-running it trains only the points
that did not finish: a finished point returns its recorded result and adds no MLflow run."""

from sweep_runs import mlflow_runs, sweep

GRID = ["resume=true", "teacher.outputs=cached", "seed=1", "hydra/launcher=processes", "hydra.launcher.n_jobs=2"]


def student_runs(folder):
    _, runs = mlflow_runs(folder)
    return {run.data.tags["loss"]: run for run in runs if run.data.tags.get("role") == "student"}


def test_rerun_of_a_grid_trains_only_the_unfinished_points(tmp_path, glue_dir):
    sweep(tmp_path, glue_dir, "loss=ce", *GRID)  # a grid cut short after its first point
    [first] = student_runs(tmp_path).values()
    assert first.info.status == "FINISHED"

    sweep(tmp_path, glue_dir, "loss=ce,kd", *GRID)
    runs = student_runs(tmp_path)
    assert sorted(runs) == ["ce", "kd"]  # one run per point: ce was not trained again
    assert runs["ce"].info.run_id == first.info.run_id
    assert runs["ce"].info.end_time == first.info.end_time
    assert runs["kd"].info.status == "FINISHED" and "final_metric" in runs["kd"].data.metrics
