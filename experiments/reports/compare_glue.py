"""The multi-seed GLUE comparison's table: mean +- sd per task, the average, paired tests against kd.

    python experiments/reports/compare_glue.py --experiment glue                 # glue.md, glue_bert2l.png
    python experiments/reports/compare_glue.py --experiment glue --tasks rte mrpc stsb \
        --losses kd fdd_traj fdd_delta fdd --table ablation             # the FDD ablation

It runs nothing: the runs come from `experiments/grids/glue_grid.sh` (Hydra multiruns, resumable) into
the MLflow experiment named here; a run tagged `variant` (the ablation's fdd_traj, fdd_delta) is
labelled by it. Every finished student run of a point the CSV record (`--record`, committed) does
not hold yet is added to it, and the table is built from the record: the MLflow store of one
session does not outlive its machine, the record does, so sessions add up. A run of a point that
is already recorded (a re-run on a new store) is not added; it is printed beside the recorded
value, which checks that a point reproduces. Outputs: the Markdown table
(`results_table.build_table`) below the hand-written reading of `<table>.md`, a bar plot with
error bars per student (`reports.plots`), both logged to an MLflow run with `role=comparison`.
Everything but the choice of tasks, students and losses is `kdsuite.reports`; a table of any
store's runs, one per (dataset, student), is `kdsuite-report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from kdsuite.reports.comparison import comparison_run
from kdsuite.reports.markdown import write_results
from kdsuite.reports.plots import save_bar_charts
from kdsuite.reports.results_table import (
    RunResult,
    build_table,
    describe_update,
    finished_runs,
    read_record,
    run_results,
    teacher_scores,
    update_record,
)
from kdsuite.tracks import get_task

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "cola", "sst2"])
    parser.add_argument("--students", nargs="+", default=["bert2l"])
    parser.add_argument("--losses", nargs="+", default=["ce", "kd", "fdd", "codir"],
                        help="loss families, or variants (the runs' `variant` tag: fdd_traj, kd_tuned, ...)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="glue")
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--table", default="glue", help="name of the results file and plots (glue, ablation)")
    parser.add_argument("--record", default="glue_runs.csv", help="the CSV record in --results")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: all)")
    parser.add_argument("--references", nargs="+", default=["kd"],
                        help="a table per reference: the paired tests are against it")
    args = parser.parse_args()

    client = mlflow.MlflowClient(args.tracking_uri)
    record = args.results / args.record
    update = update_record(record, in_scope(run_results(finished_runs(client, args.experiment)), args))
    print("\n".join(describe_update(update, record)))
    results = in_scope(read_record(record), args)
    teacher = teacher_scores(results)
    if args.seeds:
        results = [r for r in results if r.seed in args.seeds]
    names = {task: get_task(task).main_metric for task in args.tasks}
    tables, figures = [], []
    for student in args.students:  # each over the tasks it was run on
        own = [r for r in results if r.student == student]
        tasks = [task for task in args.tasks if any(r.dataset == task for r in own)]
        if not own:
            continue
        for reference in args.references:
            tables.append(build_table(own, teacher, tasks, args.losses, names, reference))
        figure = args.results / f"{args.table}_{student}.png"
        save_bar_charts(own, [student], args.losses, figure, title="MiniLM teacher -> {student}", task_order=tasks)
        figures.append(figure)
    table = "\n".join(tables)
    links = "\n".join(f"![{f.stem}]({f.name})" for f in figures)
    markdown = args.results / f"{args.table}.md"
    write_results(markdown, "\n" + table + "\n" + links + "\n",
                  command="python experiments/reports/compare_glue.py " + " ".join(sys.argv[1:]))
    with comparison_run(client, args.experiment, "glue-comparison") as run_id:
        client.log_artifact(run_id, str(markdown))
        for figure in figures:
            client.log_artifact(run_id, str(figure))
    print(table)


def in_scope(results: list[RunResult], args) -> list[RunResult]:
    """The runs this table reports: its tasks, students and loss labels (a tuned variant, which
    tuned.py reports per selection, is never recorded here)."""
    return [r for r in results if r.dataset in args.tasks and r.student in args.students and r.loss in args.losses]


if __name__ == "__main__":
    main()
