"""Loss weights tuned by the suite's own sweeps, and what they give on fresh seeds.

    python experiments/tuned.py selected --loss codir --task mrpc    # the chosen weights, as overrides
    python experiments/tuned.py table --tasks mrpc stsb               # results/tuned.md

Selection (`experiments/tuned.sh` runs it all): for each loss (kd, fdd, codir) and task, an
Optuna sweep over the loss's weights (`sweep=<loss>_weights`) on seed 1 only, in the MLflow
experiment `tuned`; its best trial's values (the sweep parent's `best.*` tags) are the selection.
`selected` prints them as run.py overrides, from the newest sweep parent of that preset, task and
student, with a tag naming the selection (study and trial): the table keeps only the runs of the
current selection. The selected weights are then trained on seeds 2-5 into the GLUE experiment, tagged
`variant=<loss>_tuned`, beside the grid's runs of every loss at its defaults (same recipe).

`table` writes `tuned.md`: the selected weights with their seed-1 value and trial count, then
mean +- sd over the report seeds with paired tests against kd at its defaults and against kd
tuned the same way, so the comparison is fair to kd.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from kdsuite.reports.markdown import markdown_table, write_results
from kdsuite.reports.results_table import build_table, finished_runs, run_results, teacher_scores
from kdsuite.reports.selection import newest_sweep_parent, selected_overrides, selection_id
from kdsuite.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
TUNED_LOSSES = ("kd", "fdd", "codir")


def current_selection(run, client, sweep_experiment: str, student: str) -> bool:
    """False for a `<loss>_tuned` run of another selection than the sweep's current one."""
    variant = run.data.tags.get("variant", "")
    if not variant.endswith("_tuned"):
        return True
    parent = newest_sweep_parent(client, sweep_experiment, f"{variant[:-len('_tuned')]}_weights",
                                 run.data.tags["dataset"], student)
    return parent is not None and run.data.tags.get("selection") == selection_id(parent)


def selection_table(client, experiment: str, tasks: list[str], student: str) -> str:
    rows = []
    for loss in TUNED_LOSSES:
        for task in tasks:
            parent = newest_sweep_parent(client, experiment, f"{loss}_weights", task, student)
            if parent is None or "best_value" not in parent.data.metrics:
                rows.append([loss, task, "-", "-", "not run"])
                continue
            metrics = parent.data.metrics
            rows.append([loss, task, f"{int(metrics.get('n_complete', 0))}",
                         f"{metrics['best_value'] * 100:.2f}", ", ".join(selected_overrides(parent))])
    return markdown_table(["loss", "task", "trials complete", "best seed-1 dev (x100)", "selected"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["selected", "table"])
    parser.add_argument("--loss", choices=TUNED_LOSSES)
    parser.add_argument("--task")
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "stsb"])
    parser.add_argument("--student", default="bert2l")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2, 3, 4, 5], help="the report seeds")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--sweep-experiment", default="tuned")
    parser.add_argument("--experiment", default="glue", help="where the report seeds' runs are")
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args()
    client = mlflow.MlflowClient(args.tracking_uri)

    if args.command == "selected":
        if not (args.loss and args.task):
            parser.error("selected needs --loss and --task")
        parent = newest_sweep_parent(client, args.sweep_experiment, f"{args.loss}_weights", args.task, args.student)
        if parent is None or not selected_overrides(parent):
            sys.exit(f"no sweep={args.loss}_weights on {args.task}/{args.student} with a best "
                     f"trial in MLflow experiment {args.sweep_experiment!r} at {args.tracking_uri}")
        print(" ".join([*selected_overrides(parent), f"+tracking.tags.selection={selection_id(parent)}"]))
        return

    runs = [run for run in finished_runs(client, args.experiment)
            if current_selection(run, client, args.sweep_experiment, args.student)]
    results = [r for r in run_results(runs)
               if r.dataset in args.tasks and r.student == args.student and r.seed in args.seeds]
    names = {task: get_task(task).main_metric for task in args.tasks}
    teacher = teacher_scores(results)
    losses = ["kd", "kd_tuned", "fdd", "fdd_tuned", "codir", "codir_tuned"]
    body = (f"\nSelected on seed 1 (`sweep=<loss>_weights`, MLflow experiment `{args.sweep_experiment}`):\n\n"
            + selection_table(client, args.sweep_experiment, args.tasks, args.student)
            + f"\nSeeds {' '.join(map(str, args.seeds))}, paired t-test against kd at its defaults:\n\n"
            + build_table(results, teacher, args.tasks, losses, names, "kd")
            + "\nThe same runs, against kd tuned the same way:\n\n"
            + build_table(results, teacher, args.tasks, losses, names, "kd_tuned"))
    write_results(args.results / "tuned.md", body, command="python experiments/tuned.py " + " ".join(sys.argv[1:]))
    print(body)


if __name__ == "__main__":
    main()
