"""Screenshots of MLflow's UI over a small kdsuite store, for the docs (docs/img/).

    apt-get install -y chromium          # Debian's package: headless screenshots
    python experiments/tools/mlflow_screenshots.py [--store DIR] [--out docs/img]

It builds a store of tiny runs (the random 4x32 teacher, 48 RTE examples, 8 steps): one student
run per loss (ce, kd, fdd, codir) and a 4-trial `fdd_weights` sweep (`run.py -m`), starts
`mlflow ui` on it, and has headless Chromium load three pages, each on first load (no clicks):

- `mlflow_runs.png`: the experiment's runs table, with the Dataset column the runs' inputs fill;
- `mlflow_compare.png`: MLflow's compare view of the four loss runs;
- `mlflow_sweep.png`: the sweep parent's charts (the runs page in chart mode, filtered to the
  parent's children, which MLflow shows under their collapsed parent): best value, trial counts,
  and the value of each trial by step.

Every URL carries `workflowType=machine_learning` (see `pages`): without it MLflow 3.17.2 opens
the experiment on its GenAI overview, whatever the experiment's `mlflow.experimentKind` tag says.
The numbers in them are those of tiny random models: the screenshots show what MLflow records and
where, not results. An existing `--store` with `mlflow.db` is reused as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOSSES = ("ce", "kd", "fdd", "codir")
TINY = [
    "teacher=tiny", "student=bert2l", "dataset=rte", "dataset.max_train_samples=48", "dataset.max_eval_samples=32",
    "dataset.max_seq_length=64", "trainer.max_steps=8", "trainer.per_device_train_batch_size=8",
    "trainer.logging_steps=2", "trainer.eval_strategy=steps", "+trainer.eval_steps=4", "trainer.bf16=false",
    "teacher.finetune.max_steps=4", "teacher.finetune.per_device_train_batch_size=8",
    "teacher.finetune.eval_strategy=no", "teacher.finetune.bf16=false",
]
WINDOW = "1900,1100"


def build_store(folder: Path, glue_dir: str) -> None:
    """The four loss runs and the sweep, each a `kdsuite` command started in `folder`."""
    common = [*TINY, f"dataset.data_dir={glue_dir}", f"cache_dir={folder / 'cache'}"]
    run_py = [sys.executable, str(ROOT / "run.py")]
    subprocess.run([*run_py, "-m", f"loss={','.join(LOSSES)}", *common], cwd=folder, check=True)
    subprocess.run([*run_py, "-m", "sweep=fdd_weights", "hydra.sweeper.n_trials=4", *common], cwd=folder, check=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ui(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow ui` on the store, once it answers."""
    ui = subprocess.Popen(
        ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--host", "127.0.0.1",
         "--port", str(port)], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    for _ in range(240):  # its workers start slowly on a busy CPU
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return ui
        except OSError:
            time.sleep(1)
    os.killpg(ui.pid, signal.SIGTERM)
    raise RuntimeError(f"mlflow ui did not answer on port {port} within 4 minutes")


def screenshot(browser: str, url: str, path: Path, wait_ms: int = 90000) -> None:
    """Chromium loads `url` headless in a fresh profile and saves what it shows after `wait_ms`
    of page time (MLflow's UI renders in the browser after fetching its runs; its charts are drawn
    late, and at 20 s they were still spinners)."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--run-all-compositor-stages-before-draw",
             f"--window-size={WINDOW}", f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url],
            check=True, capture_output=True, timeout=300)
    print(f"{path}: {url}")


def pages(folder: Path, base: str) -> dict[str, str]:
    """The three URLs, from the store's runs. Each asks for `workflowType=machine_learning`: MLflow
    3.17's UI opens an experiment on its GenAI / Model training switch (GenAI until a browser picks
    the other), not on the experiment's `mlflow.experimentKind` tag. The compare page reads its
    query by hand: `runs` first, JSON without spaces."""
    import mlflow

    from kdsuite import tracking_names as names

    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdsuite")
    runs = client.search_runs([experiment.experiment_id])
    by_loss = {run.data.tags[names.LOSS]: run.info.run_id for run in runs
               if run.data.tags.get(names.ROLE) == names.STUDENT and names.OPTUNA_TRIAL not in run.data.tags}
    [parent] = [run for run in runs if run.data.tags.get(names.ROLE) == names.SWEEP]

    def quoted(value) -> str:
        return urllib.parse.quote(json.dumps(value, separators=(",", ":")), safe=",")

    mode = "workflowType=machine_learning"
    trials = urllib.parse.quote(f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    experiment_page = f"{base}/#/experiments/{experiment.experiment_id}"
    return {
        "mlflow_runs.png": f"{experiment_page}?{mode}",
        "mlflow_compare.png": f"{base}/#/compare-runs?runs={quoted([by_loss[loss] for loss in LOSSES])}"
                              f"&experiments={quoted([experiment.experiment_id])}&{mode}",
        "mlflow_sweep.png": f"{experiment_page}/runs?compareRunsMode=CHART&searchFilter={trials}&{mode}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="folder of the store (default: a new temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "data" / "glue")))
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("Chromium is not installed: apt-get install -y chromium")
    folder = (args.store or Path(tempfile.mkdtemp(prefix="kdsuite-ui-"))).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "mlflow.db").exists():
        build_store(folder, args.glue_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ui = start_ui(folder, port)
    try:
        for name, url in pages(folder, f"http://127.0.0.1:{port}").items():
            screenshot(browser, url, args.out / name)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
