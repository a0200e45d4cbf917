"""Loss weights tuned by the suite's own sweeps, and what they give on fresh seeds.

    python experiments/reports/tuned.py losses --task mrpc --among ce,kd,fdd,codir   # the families to tune
    python experiments/reports/tuned.py selected --loss codir --task mrpc    # the chosen weights, as overrides
    python experiments/reports/tuned.py table --tasks mrpc stsb               # results/tuned.md

The tuned families are not a list kept here: they are the families with a weight sweep preset
(`conf/sweep/<loss>_weights.yaml`) whose loss YAML declares the task's track
(`kdsuite.loss_families`), so a causal-only family never enters a GLUE sweep. `--among` keeps those
of the grid's own families (`tuned.sh` passes the grid's LOSSES, ce,kd,fdd,codir by default):
the table sets each tuned family beside its defaults from that grid, and a family the grid does
not train has no defaults row to be compared with. kd stays the table's reference, at its
defaults and tuned, so the comparison is fair to kd.

Selection (`experiments/grids/tuned.sh` runs it all): for each tuned family and task, an
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

from kdsuite import tracking_names as names
from kdsuite.loss_families import SWEEP_SUFFIX, swept_families
from kdsuite.reports.markdown import markdown_table, write_results
from kdsuite.reports.results_table import build_table, finished_runs, run_results, teacher_scores
from kdsuite.reports.selection import newest_sweep_parent, selected_overrides, selection_id
from kdsuite.tracks import get_task

ROOT = Path(__file__).resolve().parents[2]
TUNED = "_tuned"  # a tuned run's variant: <loss>_tuned
SELECTION = "selection"  # the tag naming the selection a tuned run trained (written and read here only)
REFERENCE = "kd"  # the table's reference family (at its defaults, and tuned)


def track_of(task: str) -> str:
    """The track a task trains on, by the names `conf/loss/*.yaml` declare (`kdsuite.loss_families`)."""
    return get_task(task).track.name


def tuned_families(tasks: list[str], among: list[str] | None = None) -> list[str]:
    """The families with a sweep preset that fits every task's track, in table order; with `among`,
    only those of these (the grid's families)."""
    fitting = [set(swept_families(track_of(task))) for task in tasks]
    return [loss for loss in swept_families(track_of(tasks[0]))
            if all(loss in found for found in fitting) and (among is None or loss in among)]


def current_selection(run, client, sweep_experiment: str, student: str) -> bool:
    """False for a `<loss>_tuned` run of another selection than the sweep's current one."""
    variant = run.data.tags.get(names.VARIANT, "")
    if not variant.endswith(TUNED):
        return True
    parent = newest_sweep_parent(client, sweep_experiment, f"{variant[:-len(TUNED)]}{SWEEP_SUFFIX}",
                                 run.data.tags[names.DATASET], student)
    return parent is not None and run.data.tags.get(SELECTION) == selection_id(parent)


def selection_table(client, experiment: str, tasks: list[str], student: str, losses: list[str]) -> str:
    rows = []
    for loss in losses:
        for task in tasks:
            parent = newest_sweep_parent(client, experiment, f"{loss}{SWEEP_SUFFIX}", task, student)
            if parent is None or "best_value" not in parent.data.metrics:
                rows.append([loss, task, "-", "-", "not run"])
                continue
            metrics = parent.data.metrics
            rows.append([loss, task, f"{int(metrics.get('n_complete', 0))}",
                         f"{metrics['best_value'] * 100:.2f}", ", ".join(selected_overrides(parent))])
    return markdown_table(["loss", "task", "trials complete", "best seed-1 dev (x100)", "selected"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["losses", "selected", "table"])
    parser.add_argument("--loss", choices=sorted({loss for track in ("classification", "instruction")
                                                  for loss in swept_families(track)}))
    parser.add_argument("--task")
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "stsb"])
    parser.add_argument("--among", help="comma-separated: tune only these families (the grid's LOSSES); "
                                        "default: every family with a sweep preset for the tasks' track")
    parser.add_argument("--student", default="bert2l")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2, 3, 4, 5], help="the report seeds")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--sweep-experiment", default="tuned")
    parser.add_argument("--experiment", default="glue", help="where the report seeds' runs are")
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args()
    among = args.among.split(",") if args.among else None
    if args.command == "losses":
        if not args.task:
            parser.error("losses needs --task")
        print(" ".join(tuned_families([args.task], among)))
        return
    client = mlflow.MlflowClient(args.tracking_uri)

    if args.command == "selected":
        if not (args.loss and args.task):
            parser.error("selected needs --loss and --task")
        preset = f"{args.loss}{SWEEP_SUFFIX}"
        parent = newest_sweep_parent(client, args.sweep_experiment, preset, args.task, args.student)
        if parent is None or not selected_overrides(parent):
            sys.exit(f"no sweep={preset} on {args.task}/{args.student} with a best "
                     f"trial in MLflow experiment {args.sweep_experiment!r} at {args.tracking_uri}")
        print(" ".join([*selected_overrides(parent), f"+tracking.tags.{SELECTION}={selection_id(parent)}"]))
        return

    runs = [run for run in finished_runs(client, args.experiment)
            if current_selection(run, client, args.sweep_experiment, args.student)]
    results = [r for r in run_results(runs)
               if r.dataset in args.tasks and r.student == args.student and r.seed in args.seeds]
    metric_names = {task: get_task(task).main_metric for task in args.tasks}
    teacher = teacher_scores(results)
    tuned = tuned_families(args.tasks, among)
    losses = [label for loss in tuned for label in (loss, f"{loss}{TUNED}")]
    body = (f"\nSelected on seed 1 (`sweep=<loss>_weights`, MLflow experiment `{args.sweep_experiment}`):\n\n"
            + selection_table(client, args.sweep_experiment, args.tasks, args.student, tuned)
            + f"\nSeeds {' '.join(map(str, args.seeds))}, paired t-test against {REFERENCE} at its defaults:\n\n"
            + build_table(results, teacher, args.tasks, losses, metric_names, REFERENCE)
            + f"\nThe same runs, against {REFERENCE} tuned the same way:\n\n"
            + build_table(results, teacher, args.tasks, losses, metric_names, REFERENCE + TUNED))
    write_results(args.results / "tuned.md", body,
                  command="python experiments/reports/tuned.py " + " ".join(sys.argv[1:]))
    print(body)


if __name__ == "__main__":
    main()
