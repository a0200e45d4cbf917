"""The student recipe check behind the GLUE comparison: dev score after each epoch per learning rate.

    GLUE_DIR=../shared/data/glue python experiments/student_recipe.py --tasks stsb \
        --losses ce kd --lrs 1e-4 3e-4 1e-3 --epochs 3 --seeds 1
    python experiments/student_recipe.py ... --table-only     # rebuild the table from MLflow

Each (task, loss, learning rate, seed) is one run of `--epochs` epochs with an evaluation after
every epoch, so one run gives the dev score after 1, 2, ... epochs (of a schedule that decays over
all of them, so "after epoch 1" is not the same as a 1-epoch run, which decays to zero there).
Same teacher cache, student, mapping and loss defaults as `compare_glue.py`; MLflow experiment
`recipe` by default. It resumes: a point with a FINISHED run (same task, loss, seed, learning
rate and epochs) is not run again. Writes `experiments/results/recipe.md` (the reading above the
table marker is kept).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import mlflow

from kdsuite.reports.markdown import loss_rank, write_results
from kdsuite.reports.results_table import (
    build_table, finished_runs, recipe_point, recipe_table, run_results, teacher_metrics,
)
from kdsuite.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["stsb"])
    parser.add_argument("--students", nargs="+", default=["bert2l"])
    parser.add_argument("--losses", nargs="+", default=["ce", "kd"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="recipe")
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--table-only", action="store_true", help="run nothing, rebuild the table")
    args = parser.parse_args()

    client = mlflow.MlflowClient(args.tracking_uri)
    grid = [(t, s, l, lr, args.epochs, seed) for t in args.tasks for s in args.students for l in args.losses
            for lr in args.lrs for seed in args.seeds]
    for task, student, loss, lr, epochs, seed in ([] if args.table_only else grid):
        if (task, student, loss, lr, epochs, seed) in {recipe_point(r) for r in finished_runs(client, args.experiment)}:
            continue
        overrides = [f"dataset={task}", f"student={student}", f"loss={loss}", f"seed={seed}",
                     f"trainer.learning_rate={lr}", f"trainer.num_train_epochs={epochs}",
                     f"tracking.uri={args.tracking_uri}", f"tracking.experiment={args.experiment}"]
        if subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides], cwd=ROOT).returncode != 0:
            print(f"run failed (marked FAILED in MLflow), going on: {' '.join(overrides)}")

    runs = finished_runs(client, args.experiment)
    table = recipe_table(client, runs, args.tasks, args.students, args.epochs)
    for lr in sorted({recipe_point(r)[3] for r in runs if recipe_point(r)[4] == args.epochs}):
        same = [r for r in runs if recipe_point(r)[3:5] == (lr, args.epochs)]
        results = [r for r in run_results(same) if r.dataset in args.tasks and r.student in args.students]
        losses = sorted({r.loss for r in results}, key=loss_rank)
        if len(losses) > 1:
            names = {task: get_task(task).main_metric for task in args.tasks}
            table += (f"\nAt lr {lr:g}, the final dev score (after epoch {args.epochs}), mean +- sd over seeds, "
                      f"paired t-test against kd:\n\n" + build_table(results, teacher_metrics(same), args.tasks, losses, names))
    write_results(args.results / "recipe.md", "\n" + table,
                  command="python experiments/student_recipe.py " + " ".join(sys.argv[1:]))
    print(table)


if __name__ == "__main__":
    main()
