"""The student recipe check's table: dev score after each epoch, per task, student and learning rate.

    python experiments/reports/student_recipe.py --tasks stsb mrpc cola --students bert2l bert4l

It runs nothing: the runs come from `experiments/grids/recipe.sh` (one Hydra multirun over task x
student x learning rate, resumable) into the MLflow experiment `recipe`. Each run trains
`trainer.num_train_epochs` epochs with an evaluation after every epoch, so one run gives the dev
score after 1, 2, ... epochs (of a schedule that decays over all of them, so "after epoch 1" is
not a 1-epoch run, which decays to zero there). Runs of different lengths get a table each. Where
one (task, student, lr, epochs) has several losses, a paired comparison against kd follows.
Writes `experiments/results/recipe.md` (the reading above the table marker is kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from kdsuite.reports.markdown import loss_rank, write_results
from kdsuite.reports.results_table import (
    build_table,
    finished_runs,
    recipe_point,
    recipe_table,
    run_results,
    teacher_scores,
)
from kdsuite.tracks import get_task

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["stsb", "mrpc", "cola"])
    parser.add_argument("--students", nargs="+", default=["bert2l", "bert4l"])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="recipe")
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args()

    client = mlflow.MlflowClient(args.tracking_uri)
    runs = [r for r in finished_runs(client, args.experiment)
            if recipe_point(r)[0] in args.tasks and recipe_point(r)[1] in args.students]
    names = {task: get_task(task).main_metric for task in args.tasks}
    sections = []
    for epochs in sorted({recipe_point(r)[4] for r in runs}):
        sections.append(f"{epochs}-epoch runs, dev main metric (x100) after each epoch:\n\n"
                        + recipe_table(client, runs, args.tasks, args.students, epochs))
        for lr in sorted({recipe_point(r)[3] for r in runs if recipe_point(r)[4] == epochs}):
            same = [r for r in runs if recipe_point(r)[3:5] == (lr, epochs)]
            results = run_results(same)
            losses = sorted({r.loss for r in results}, key=loss_rank)
            if len(losses) > 1 and "kd" in losses:
                tasks = [t for t in args.tasks if any(r.dataset == t for r in results)]
                sections.append(f"At lr {lr:g}, {epochs} epochs, the final dev score, mean +- sd over seeds, "
                                f"paired t-test against kd:\n\n"
                                + build_table(results, teacher_scores(run_results(same)), tasks, losses, names))
    table = "\n".join(sections)
    write_results(args.results / "recipe.md", "\n" + table,
                  command="python experiments/reports/student_recipe.py " + " ".join(sys.argv[1:]))
    print(table)


if __name__ == "__main__":
    main()
