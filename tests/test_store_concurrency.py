"""Several processes opening a new SQLite MLflow store at once: each creates (or migrates) it under
the lock beside the file, so all of them get their run. Without the lock, alembic's migration
races ("table _alembic_tmp_experiments already exists", "expected to match one row")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e  # real processes

# Imports first; then each process says it is ready and waits for the go, so all touch the store together.
OPEN_A_RUN = """
import sys, time
from pathlib import Path
import mlflow
from omegaconf import OmegaConf
from kdsuite.run import tracking

uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.005)
tracking.configure(OmegaConf.create({"uri": uri, "experiment": "kdsuite"}))
with tracking.tracked_run("concurrent", {"role": "student"}):
    mlflow.log_metric("final_metric", 1.0)
"""


@pytest.mark.slow(seconds=20)
def test_three_processes_create_one_new_store_together(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    go = tmp_path / "go"
    processes = [
        subprocess.Popen([sys.executable, "-c", OPEN_A_RUN, uri, str(tmp_path / f"ready{i}"), str(go)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(3)
    ]
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob("ready*"))) < 3:
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "a process did not start"
        time.sleep(0.05)
    go.touch()
    outputs = [process.communicate(timeout=180)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("kdsuite")
    finished = client.search_runs([experiment.experiment_id])
    assert [run.info.status for run in finished] == ["FINISHED"] * 3
