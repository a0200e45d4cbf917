"""Write a Markdown table of the finished runs of one MLflow experiment, straight from the store.

    python experiments/reports/summarize_runs.py --tracking-uri sqlite:///mlflow.db \
        --experiment foundation [more experiments ...] --out experiments/results/foundation.md

One row per run (teachers first): what ran, its final dev metrics, and the command that ran it
(rebuilt from the run's logged Hydra overrides). If the output file holds the line
`<!-- table -->`, the text above it is kept and everything below is regenerated; a new file
gets a title and that line above the table.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import yaml

from kdsuite import tracking_names as names
from kdsuite.data.glue import load_split
from kdsuite.metrics import glue_metrics
from kdsuite.reports.markdown import loss_rank, markdown_table, write_results
from kdsuite.tracks import get_task

ROLE_ORDER = {names.TEACHER: 0, names.STUDENT: 1}


def command_of(client: mlflow.MlflowClient, run) -> str:
    if run.data.tags.get(names.ROLE) == names.TEACHER:
        return "fine-tuned by the first student run of this teacher x dataset (cached after)"
    try:
        path = client.download_artifacts(run.info.run_id, "config/overrides.yaml")
    except Exception:  # noqa: BLE001 - runs started outside Hydra have no overrides artifact
        return ""
    overrides = [item for item in yaml.safe_load(Path(path).read_text()) or [] if not item.startswith("tracking.")]
    return "`python run.py " + " ".join(overrides) + "`"


def summarize(tracking_uri: str, experiments: list[str]) -> str:
    client = mlflow.MlflowClient(tracking_uri)
    ids = []
    for name in experiments:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise SystemExit(f"no experiment {name!r} in {tracking_uri}")
        ids.append(found.experiment_id)
    every_run = client.search_runs(ids)
    finished = [run for run in every_run
                if run.info.status == "FINISHED" and run.data.tags.get(names.ROLE) in ROLE_ORDER]
    finished.sort(key=lambda run: (ROLE_ORDER.get(run.data.tags.get(names.ROLE), 2),
                                   run.data.tags.get(names.DATASET, ""), run.data.tags.get(names.STUDENT_NAME, ""),
                                   loss_rank(run.data.tags.get(names.LOSS, "")), run.info.start_time))
    header = ["role", "dataset", "teacher", "student", "loss", "seed", "main metric", "dev metrics", "command"]
    rows = []
    for run in finished:
        tags, metrics = run.data.tags, run.data.metrics
        dev = ", ".join(
            f"{name} {metrics[names.final(name)] * 100:.2f}"
            for name in get_task(tags[names.DATASET]).metrics
            if names.final(name) in metrics
        )
        rows.append([
            tags.get(names.ROLE, ""), tags.get(names.DATASET, ""), tags.get(names.TEACHER_NAME, ""),
            tags.get(names.STUDENT_NAME, "-"), tags.get(names.LOSS, "ce (fine-tune)"), tags.get(names.SEED, "-"),
            f"{tags.get(names.MAIN_METRIC, '')} {metrics.get(names.FINAL_METRIC, float('nan')) * 100:.2f}", dev,
            command_of(client, run),
        ])
    for dataset in sorted({run.data.tags.get(names.DATASET) for run in finished} - {None}):
        rows.append(majority_row(dataset))
    lines = markdown_table(header, rows).splitlines()
    for sweep in (run for run in every_run if run.data.tags.get(names.ROLE) == names.SWEEP):
        lines += ["", *sweep_section(client, sweep)]
    return "\n".join(lines) + "\n"


def majority_row(dataset: str) -> list[str]:
    """The dev metrics of always predicting the most frequent train label (reference row's cells)."""
    task = get_task(dataset)
    data_dir = os.environ.get("GLUE_DIR")
    if task.is_regression or not data_dir:
        return ["baseline", dataset, "-", "-", "majority class", "-", "(needs GLUE_DIR)", "", ""]
    majority = Counter(load_split(task, "train", data_dir).labels).most_common(1)[0][0]
    labels = np.array(load_split(task, "validation", data_dir).labels)
    logits = np.zeros((len(labels), task.num_labels))
    logits[:, majority] = 1.0
    metrics = glue_metrics(task, logits, labels)
    dev = ", ".join(f"{name} {value * 100:.2f}" for name, value in metrics.items())
    return ["baseline", dataset, "-", "-", "majority class", "-",
            f"{task.main_metric} {metrics[task.main_metric] * 100:.2f}", dev, f"always predict train label {majority}"]


def sweep_section(client: mlflow.MlflowClient, sweep) -> list[str]:
    """A sweep parent run: its best trial and its per-trial table (the run's own artifact)."""
    tags, metrics = sweep.data.tags, sweep.data.metrics
    best = {key[len(names.BEST_PREFIX):]: value for key, value in tags.items() if key.startswith(names.BEST_PREFIX)}
    lines = [
        f"Sweep `{tags.get(names.OPTUNA_STUDY)}` (MLflow run {sweep.info.run_id}, {sweep.info.status}): "
        f"best trial {tags.get(names.BEST_TRIAL)} with {metrics.get('best_value', float('nan')) * 100:.2f}, "
        f"params {best}",
        "",
    ]
    try:
        lines.append(Path(client.download_artifacts(sweep.info.run_id, "sweep/trials.md")).read_text())
    except Exception:  # noqa: BLE001 - a sweep still running has no table yet
        lines.append("(no trial table yet)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", required=True, nargs="+", help="one or more MLflow experiments")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    table = summarize(args.tracking_uri, args.experiment)
    if args.out:
        write_results(args.out, table)
    print(table)


if __name__ == "__main__":
    main()
