"""Helpers for tests that run `run.py -m` sweeps as real processes, on tiny models and small real
data, each in its own folder with its own MLflow and Optuna SQLite stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
from conftest import REPO

FAST = [
    "experiment=smoke", "trainer.max_steps=2", "trainer.eval_strategy=no", "teacher.finetune.max_steps=2",
    "dataset.max_train_samples=32", "dataset.max_eval_samples=32",
]


def sweep_env(**extra: str) -> dict[str, str]:
    """This checkout's src/ and tests/ (test losses) PREPENDED to PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def sweep_command(folder: Path, glue_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, str(REPO / "run.py"), "-m", *FAST, *overrides,
        f"dataset.data_dir={glue_dir}", f"cache_dir={folder / 'cache'}",
        f"hydra.sweep.dir={folder / 'multirun'}",
    ]


def start_sweep(folder: Path, glue_dir: Path, *overrides: str, env=None) -> subprocess.Popen:
    """A sweep process started in `folder` (stores `folder/mlflow.db`, `folder/optuna.db`)."""
    return subprocess.Popen(
        sweep_command(folder, glue_dir, *overrides), cwd=folder, env=env or sweep_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def sweep(folder: Path, glue_dir: Path, *overrides: str, env=None, check: bool = True):
    result = subprocess.run(
        sweep_command(folder, glue_dir, *overrides), capture_output=True, text=True, cwd=folder,
        env=env or sweep_env(),
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def mlflow_runs(folder: Path):
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdsuite")
    return client, client.search_runs([experiment.experiment_id])


def sweep_parents(runs) -> list:
    return [run for run in runs if run.data.tags.get("role") == "sweep"]


def children_of(runs, parent) -> list:
    return [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
