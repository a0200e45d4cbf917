"""`experiments/grids/tuned.sh` end to end, as a user runs it, on a tiny teacher: for each loss a
`sweep=<loss>_weights` study on seed 1, the grid's defaults on a report seed, the selected weights
trained on that seed with their selection tag, and `tuned.md` built from MLflow."""

from __future__ import annotations

import os
import subprocess

import mlflow
import pytest
from conftest import REPO, TINY_RUN
from sweep_runs import sweep_env

# The tiny run without its student and dataset (tuned.sh names them).
RECIPE = [o for o in TINY_RUN if not o.startswith(("student=", "dataset="))] + ["dataset.max_train_samples=32"]


@pytest.mark.slow(seconds=180)
def test_tuned_pipeline_sweeps_selects_reports_and_builds_its_table(tmp_path, glue_dir):
    # tuned.sh works from the folder two above its own; give it one of its own here, so its outputs/,
    # multirun/ and optuna.db stay out of the checkout
    for kind in ("grids", "reports"):
        (tmp_path / "experiments" / kind).mkdir(parents=True)
    for name in ("grids/tuned.sh", "reports/tuned.py", "grids/glue_grid.sh"):
        (tmp_path / "experiments" / name).symlink_to(REPO / "experiments" / name)
    for name in ("run.py", "conf"):
        (tmp_path / name).symlink_to(REPO / name)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # JOBS=1: trials and grid points in their multirun's own process (test_sweep_workers covers
    # trials in processes of their own), saving a worker's start, about 10 s, per multirun
    # LOSSES: two tuned families (kd, fdd) keep the per-family loop and a selection that must not be
    # taken for another's; codir's preset composes in test_configs, and a third family only adds time
    env = sweep_env(
        TASKS="rte", TRIALS="2", JOBS="1", SEEDS="2", LOSSES="ce,kd,fdd", RECIPE=" ".join(RECIPE),
        RESULTS=str(tmp_path), GLUE_DIR=str(glue_dir), KDSUITE_CACHE=str(tmp_path / "cache"),
    )
    result = subprocess.run(["bash", str(tmp_path / "experiments" / "grids" / "tuned.sh"), uri], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    client = mlflow.MlflowClient(uri)
    sweeps = client.search_runs([client.get_experiment_by_name("tuned").experiment_id],
                                filter_string="tags.role = 'sweep'")
    assert sorted(run.data.tags["optuna_study"].split("_rte_")[0] for run in sweeps) == ["fdd_weights", "kd_weights"]
    glue = client.search_runs([client.get_experiment_by_name("glue").experiment_id])
    assert all(run.info.status == "FINISHED" for run in glue)
    tuned = {run.data.tags["variant"]: run for run in glue if "variant" in run.data.tags}
    defaults = {run.data.tags["loss"] for run in glue if "variant" not in run.data.tags}
    assert sorted(tuned) == ["fdd_tuned", "kd_tuned"] and defaults == {"ce", "kd", "fdd"}
    for variant, run in tuned.items():
        [parent] = [p for p in sweeps if p.data.tags["optuna_study"].startswith(variant.replace("_tuned", "_weights"))]
        # the tuned run trained the sweep's best values, and names that selection
        assert run.data.tags["seed"] == "2"
        assert run.data.tags["selection"] == f"{parent.data.tags['optuna_study']}/{parent.data.tags['best_trial']}"
        best = {key[len("best."):]: value for key, value in parent.data.tags.items() if key.startswith("best.")}
        assert best and all(float(run.data.params[key]) == float(value) for key, value in best.items())

    table = (tmp_path / "tuned.md").read_text()
    for loss in ("kd", "fdd"):
        assert f"| {loss} | rte | 2 |" in table  # trials complete, from the selection table
    assert "kd_tuned" in table and "fdd_tuned" in table and "codir" not in table
    assert os.path.getsize(tmp_path / "optuna.db") > 0
