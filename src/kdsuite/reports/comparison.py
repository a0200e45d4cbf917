"""Side-by-side method comparisons from a Hydra multirun (`experiment=compare_methods`).

`ComparisonSummary` is a Hydra callback: when the multirun ends it gathers the finished student
runs the multirun made (tag `comparison` = the multirun folder), writes the mean +- sd of the
final metric per loss to `<multirun folder>/summary.md`, and logs that table to an MLflow run
of its own (`role=comparison`). `comparison_run` is that kind of run for any script that logs a
table (experiments/reports/compare_glue.py).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdsuite import tracking_names as names
from kdsuite.reports.markdown import markdown_table


def summary_rows(runs) -> list[dict[str, object]]:
    """Per (dataset, student, loss): number of runs, mean and sample sd of `final_metric`."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for run in runs:
        tags = run.data.tags
        if names.FINAL_METRIC in run.data.metrics:
            key = (tags[names.DATASET], tags[names.STUDENT_NAME], tags[names.LOSS])
            groups[key].append(run.data.metrics[names.FINAL_METRIC])
    rows = []
    for (dataset, student, loss), values in sorted(groups.items()):
        rows.append({
            "dataset": dataset, "student": student, "loss": loss, "n": len(values),
            "mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        })
    return rows


def summary_markdown(rows: list[dict[str, object]], metric: str) -> str:
    """The summary rows as a Markdown table, mean and sd x100."""
    return markdown_table(
        ["dataset", "student", "loss", "runs", f"{metric} mean +- sd"],
        [[row["dataset"], row["student"], row["loss"], str(row["n"]),
          f"{row['mean'] * 100:.2f} +- {row['sd'] * 100:.2f}"] for row in rows],
    )


class ComparisonSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        client = mlflow.MlflowClient(config.tracking.uri)
        experiment = client.get_experiment_by_name(config.tracking.experiment)
        if experiment is None:
            return
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=(f"tags.{names.COMPARISON_OF} = '{sweep_dir}' and tags.{names.ROLE} = '{names.STUDENT}' "
                           "and attributes.status = 'FINISHED'"),
        )
        metric = runs[0].data.tags.get(names.MAIN_METRIC, "metric") if runs else "metric"
        table = summary_markdown(summary_rows(runs), metric)
        path = Path(sweep_dir) / "summary.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table)
        run = client.create_run(
            experiment.experiment_id, run_name=f"comparison-{Path(sweep_dir).name}",
            tags={names.ROLE: names.COMPARISON, names.COMPARISON_OF: sweep_dir},
        )
        client.log_artifact(run.info.run_id, str(path))
        client.set_terminated(run.info.run_id)
        print(table)


@contextmanager
def comparison_run(client: mlflow.MlflowClient, experiment: str, run_name: str) -> Iterator[str]:
    """A `role=comparison` MLflow run in `experiment` (created if missing) to log a table and its
    plots to; yields its id and ends it FINISHED, or FAILED when the block raises."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, run_name=run_name, tags={names.ROLE: names.COMPARISON}).info.run_id
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
