"""`kdsuite-report`: the comparison table of the finished student runs in any MLflow store.

    kdsuite -m loss=kd,fdd seed=1,2,3 dataset=mrpc
    kdsuite-report --tracking-uri sqlite:///mlflow.db
    kdsuite-report --tracking-uri sqlite:///mlflow.db --filter "tags.dataset = 'mrpc'" --reference ce \
        --csv mrpc.csv --png mrpc.png

One table per (dataset, student): per loss (or per `variant` tag, `--by variant`) the number of
runs and the mean +- sd over them of the main dev metric (`final_metric`, named by the tag
`main_metric`, x100), the teacher's score when the runs recorded it, and a two-sided paired
t-test against the reference over the seeds both have. Markdown to stdout; `--csv` writes the
same rows unrounded, `--png` a bar chart per student.

Which runs: FINISHED runs tagged `role=student` in one experiment, narrowed by `--filter` (MLflow's
search syntax, e.g. "params.`trainer.learning_rate` = '0.0003'"). Sweep trials (tag
`optuna_trial`) are tuning runs, not results: left out unless `--trials`. Two runs of one point
(dataset, student, label, seed) would be counted as two seeds, so they are refused, naming the
params in which they differ, for `--filter` to choose between them.

Bad input (a store that is not there or cannot be read, an unknown experiment, a bad filter, no
finished student runs, a reference no run has) ends with exit status 1 and one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from kdsuite import tracking_names as names


class ReportError(Exception):
    """Bad input: printed as one line, exit status 1."""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        print(report(args), end="")
    except ReportError as error:
        print(f"kdsuite-report: {error}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdsuite-report", description="Mean +- sd per loss and paired tests against a reference, per "
        "(dataset, student), from the finished student runs of an MLflow store.")
    parser.add_argument("--tracking-uri", required=True, help="the MLflow store (sqlite:///mlflow.db, a folder, "
                        "http://..., postgresql://...)")
    parser.add_argument("--experiment", default="kdsuite", help="the MLflow experiment (default: kdsuite, the "
                        "suite's tracking.experiment)")
    parser.add_argument("--filter", help="an MLflow search filter the runs must also match, e.g. "
                        "\"tags.dataset = 'mrpc'\"")
    parser.add_argument("--reference", default="kd", help="the loss (or variant) the others are tested against")
    parser.add_argument("--by", choices=["loss", "variant"], default="loss",
                        help="label runs by their loss family, or by their `variant` tag (runs without one: loss)")
    parser.add_argument("--trials", action="store_true", help="include sweep trials (left out by default)")
    parser.add_argument("--csv", type=Path, help="also write the rows, unrounded, to this CSV file")
    parser.add_argument("--png", type=Path, help="also draw a bar chart per student into this PNG file")
    return parser


def report(args: argparse.Namespace) -> str:
    """The Markdown report for parsed arguments (and the CSV and PNG files they ask for)."""
    from kdsuite.reports.results_table import run_results, summarise, summary_tables, teacher_scores

    client = open_store(args.tracking_uri)
    runs = student_runs(client, args)
    results = run_results(runs, label_by=args.by)
    if not results:
        raise ReportError(f"no finished student runs with a final_metric in experiment {args.experiment!r} at "
                          f"{args.tracking_uri}{where(args)}")
    refuse_duplicates(results, {run.info.run_id: run for run in runs}, args.by)
    labels = sorted({r.loss for r in results})
    if args.reference not in labels:
        raise ReportError(f"--reference {args.reference}: no run is labelled so (by {args.by}); the runs' labels: "
                          f"{', '.join(labels)}")
    metric_names = main_metrics(runs)
    try:
        teacher = teacher_scores(results)
    except ValueError as error:
        raise ReportError(str(error)) from None
    rows = summarise(results, args.reference)
    if args.csv:
        from kdsuite.reports.results_table import write_summary_csv

        write_summary_csv(args.csv, rows, metric_names)
    if args.png:
        from kdsuite.reports.markdown import loss_rank
        from kdsuite.reports.plots import save_bar_charts

        students = sorted({r.student for r in results})
        save_bar_charts(results, students, sorted(labels, key=loss_rank), args.png)
    intro = (f"Finished student runs of experiment {args.experiment!r} at {args.tracking_uri}{where(args)}: "
             f"the main dev metric x100, mean +- sd over runs; two-sided paired t-test against "
             f"{args.reference} over the seeds both have.\n\n")
    return intro + summary_tables(rows, metric_names, teacher)


def open_store(uri: str):
    """An `MlflowClient` on `uri` once the store is known to be there and readable. A SQLite file
    or a folder that does not exist is refused: MLflow would create an empty store there."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a server that is not there fails at once
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    parsed = urlparse(uri)
    local = None
    if parsed.scheme == "sqlite":
        local = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    elif parsed.scheme in ("", "file"):
        local = Path(parsed.path if parsed.scheme == "file" else uri)
    if local is not None and not local.exists():
        raise ReportError(f"no MLflow store at {uri}: {local} does not exist")
    try:
        client = mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)
    except Exception as error:  # MLflow raises many types for a URI it cannot use
        raise ReportError(f"cannot read the MLflow store at {uri}: {first_line(error)}") from None
    return client


def student_runs(client, args: argparse.Namespace) -> list:
    """The FINISHED `role=student` runs of the experiment matching the filter (sweep trials left
    out unless asked for)."""
    from mlflow.exceptions import MlflowException

    from kdsuite.reports.results_table import finished_runs

    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ReportError(f"no experiment named {args.experiment!r} at {args.tracking_uri} (experiments there: "
                          f"{known})")
    try:
        runs = finished_runs(client, args.experiment, args.filter)
    except MlflowException as error:
        raise ReportError(f"bad --filter {args.filter!r}: {first_line(error)}") from None
    return [run for run in runs if args.trials or names.OPTUNA_TRIAL not in run.data.tags]


def refuse_duplicates(results, runs_by_id: dict, label_by: str) -> None:
    """Two finished runs of one (dataset, student, label, seed): say which, and the params they
    differ in, so that `--filter` can pick one."""
    from kdsuite.reports.results_table import duplicate_points

    duplicates = duplicate_points(results)
    if not duplicates:
        return
    (dataset, student, label, seed), same = next(iter(duplicates.items()))
    params = [runs_by_id[r.run_id].data.params for r in same]
    differing = sorted(key for key in set().union(*params) if len({p.get(key) for p in params}) > 1)
    shown = "; ".join(f"{key}: {', '.join(str(p.get(key)) for p in params)}" for key in differing[:3])
    hint = (f"they differ in {shown}; choose with --filter \"params.`{differing[0]}` = '...'\"" if differing
            else "they have the same params (a repeated run); choose one with --filter \"attributes.run_id != '...'\"")
    if label_by == "loss" and any(names.VARIANT in runs_by_id[r.run_id].data.tags for r in same):
        hint = "some are ablation variants: label them apart with --by variant"
    raise ReportError(f"{len(duplicates)} point(s) have more than one finished run, e.g. {dataset}, {student}, "
                      f"{label}, seed {seed}: runs {', '.join(r.run_id for r in same)}; {hint}")


def main_metrics(runs) -> dict[str, str]:
    """Each dataset's main metric, as its runs name it (tag `main_metric`)."""
    found: dict[str, set[str]] = {}
    for run in runs:
        tags = run.data.tags
        if names.MAIN_METRIC in tags and names.DATASET in tags:
            found.setdefault(tags[names.DATASET], set()).add(tags[names.MAIN_METRIC])
    return {dataset: "/".join(sorted(metrics)) for dataset, metrics in found.items()}


def where(args: argparse.Namespace) -> str:
    return f" matching {args.filter!r}" if args.filter else ""


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


if __name__ == "__main__":
    sys.exit(main())
