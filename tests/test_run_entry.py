"""`python run.py ...` itself: Hydra composes the preset and overrides, and the run lands in MLflow
with the overrides recorded."""

import subprocess
import sys

import mlflow
import pytest
import yaml
from conftest import REPO


@pytest.mark.slow(seconds=15)
def test_run_py_with_smoke_preset(tmp_path, glue_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        "experiment=smoke", "loss=fdd", "trainer.max_steps=2", "trainer.eval_strategy=no",
        "teacher.finetune.max_steps=2", f"dataset.data_dir={glue_dir}", f"cache_dir={tmp_path / 'cache'}",
        f"tracking.uri={uri}", f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    result = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *overrides], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("kdsuite")
    [student] = [run for run in client.search_runs([experiment.experiment_id]) if run.data.tags["role"] == "student"]
    assert student.info.status == "FINISHED"
    assert student.data.tags["teacher"] == "tiny" and student.data.tags["loss"] == "fdd"
    assert student.data.params["dataset.max_train_samples"] == "64"  # from the preset
    recorded = yaml.safe_load(open(client.download_artifacts(student.info.run_id, "config/overrides.yaml")))
    assert "loss=fdd" in recorded and "experiment=smoke" in recorded
    assert (tmp_path / "hydra" / ".hydra" / "config.yaml").is_file()


def test_a_sweeps_own_process_does_not_import_the_training_stack():
    """`run.py -m` composes, sweeps and launches; its trials import the Trainer themselves. run.py,
    the sweeper plugin and what it needs (`kdsuite.stores`, `kdsuite.config_checks`, the MLflow
    names) leave the training stack unimported, which is about 7 s of every multirun's start on a
    2-core CPU."""
    probe = ("import sys, runpy; sys.argv = ['run.py']; "
             f"runpy.run_path({str(REPO / 'run.py')!r}, run_name='not_main'); "
             "import kdsuite.stores.optuna_trial, kdsuite.stores.lock, kdsuite.stores.check, kdsuite.config_checks, "
             "kdsuite.tracking_names, hydra_plugins.kdsuite_optuna_sweeper.sweeper; "
             "print(' '.join(m for m in ('kdsuite.run.job', 'kdsuite.trainer', 'transformers.trainer') "
             "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == []
    from kdsuite.run import train

    assert train.__module__ == "kdsuite.run.job"  # still there for whoever asks for it
