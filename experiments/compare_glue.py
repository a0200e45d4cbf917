"""The multi-seed GLUE comparison of ce, kd, fdd and codir: runs what is missing, then writes the table.

    GLUE_DIR=../shared/data/glue python experiments/compare_glue.py --seeds 1 2 3
    python experiments/compare_glue.py --table-only          # rebuild the table from MLflow

Grid: tasks x students x losses x seeds, MiniLM teacher fine-tuned once per task (the cache),
students initialised from the teacher via the mapping, default loss weights. It resumes: a
combination that already has a FINISHED run in the MLflow experiment is not run again. Each
finished run is appended to the CSV record (committed), so the table survives without the
MLflow database. SST-2 uses a fixed seeded train subset (`--sst2-train-samples`). Several workers
may share one grid (e.g. two single-thread processes on two cores, `--tasks` in different
orders): before each run a worker skips points another has finished or is running.

The FDD ablation (KD alone, +traj, +delta, both) runs on the same grid as variants, each tagged
`variant` so the table tells them apart; `kd` and `fdd` are shared with the main comparison:

    python experiments/compare_glue.py --tasks rte mrpc stsb --losses kd fdd_traj fdd_delta fdd \
        --table ablation

Outputs: the Markdown table (`results_table.build_table`), a bar plot with error bars (PNG),
both logged to an MLflow run with `role=comparison`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import mlflow

from kdsuite.reports.markdown import write_results
from kdsuite.reports.results_table import (
    RunResult, append_csv, build_table, finished_runs, pending, run_results, teacher_metrics,
)
from kdsuite.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]

# Grid label -> run.py overrides. The loss families with their default weights, and the FDD
# ablation's two single-term variants (kd is "KD alone", fdd is "both").
VARIANTS = {
    "ce": ["loss=ce"],
    "kd": ["loss=kd"],
    "fdd": ["loss=fdd"],
    "codir": ["loss=codir"],
    "fdd_traj": ["loss=fdd", "loss.beta_delta=0"],
    "fdd_delta": ["loss=fdd", "loss.alpha_traj=0"],
}


CLAIM_HOURS = 3  # a RUNNING run older than this is taken to be dead, and its point is run again


def taken(client: mlflow.MlflowClient, experiment: str) -> set[tuple[str, str, str, int]]:
    """Grid points finished, or running in another worker (several workers can share one grid)."""
    points = {(r.dataset, r.student, r.loss, r.seed) for r in run_results(finished_runs(client, experiment))}
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return points
    since = int((time.time() - CLAIM_HOURS * 3600) * 1000)
    running = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.role = 'student' and attributes.status = 'RUNNING' and attributes.start_time > {since}",
    )
    for run in running:
        tags = run.data.tags
        points.add((tags["dataset"], tags["student"], tags.get("variant") or tags["loss"], int(tags["seed"])))
    return points


def plot(results: list[RunResult], tasks: list[str], losses: list[str], student: str, path: Path) -> None:
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(1.8 * len(tasks) + 2, 4))
    width = 0.8 / len(losses)
    for offset, loss in enumerate(losses):
        means, sds = [], []
        for task in tasks:
            values = [r.value * 100 for r in results if (r.student, r.loss, r.dataset) == (student, loss, task)]
            means.append(statistics.fmean(values) if values else 0.0)
            sds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        positions = [i + offset * width for i in range(len(tasks))]
        axes.bar(positions, means, width, yerr=sds, capsize=3, label=loss)
    axes.set_xticks([i + width * (len(losses) - 1) / 2 for i in range(len(tasks))], tasks)
    axes.set_ylabel("dev main metric (x100), mean +- sd over seeds")
    axes.set_title(f"MiniLM teacher -> {student}")
    axes.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "cola", "sst2"])
    parser.add_argument("--students", nargs="+", default=["bert2l"])
    parser.add_argument("--losses", nargs="+", default=["ce", "kd", "fdd", "codir"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--sst2-train-samples", type=int, default=8000)
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="glue")
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--table", default="glue", help="name of the results file and plots (glue, ablation)")
    parser.add_argument("--table-only", action="store_true", help="run nothing, rebuild the table")
    parser.add_argument("--override", nargs="*", default=[], help="extra run.py overrides for every run")
    args = parser.parse_args()

    client = mlflow.MlflowClient(args.tracking_uri)
    grid = [(t, s, l, seed) for t in args.tasks for s in args.students for l in args.losses for seed in args.seeds]
    todo = [] if args.table_only else pending(grid, run_results(finished_runs(client, args.experiment)))
    if not args.table_only:
        print(f"{len(grid) - len(todo)} of {len(grid)} runs already finished; {len(todo)} to run")
    for task, student, loss, seed in todo:
        if (task, student, loss, seed) in taken(client, args.experiment):
            continue  # another worker finished it or is running it
        overrides = [f"dataset={task}", f"student={student}", *VARIANTS[loss], f"seed={seed}",
                     f"+tracking.tags.variant={loss}", f"tracking.uri={args.tracking_uri}",
                     f"tracking.experiment={args.experiment}", *args.override]
        if task == "sst2":
            overrides.append(f"dataset.max_train_samples={args.sst2_train_samples}")
        result = subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides], cwd=ROOT)
        if result.returncode != 0:
            print(f"run failed (marked FAILED in MLflow), going on: {' '.join(overrides)}")
        append_csv(args.results / "glue_runs.csv", run_results(finished_runs(client, args.experiment)))

    runs = finished_runs(client, args.experiment)
    results = [r for r in run_results(runs) if r.dataset in args.tasks and r.student in args.students]
    append_csv(args.results / "glue_runs.csv", results)
    names = {task: get_task(task).main_metric for task in args.tasks}
    table = build_table(results, teacher_metrics(runs), args.tasks, args.losses, names)
    figures = []
    for student in args.students:
        figure = args.results / f"{args.table}_{student}.png"
        plot(results, args.tasks, args.losses, student, figure)
        figures.append(figure)
    links = "\n".join(f"![{f.stem}]({f.name})" for f in figures)
    markdown = args.results / f"{args.table}.md"
    write_results(markdown, "\n" + table + "\n" + links + "\n",
                  command="python experiments/compare_glue.py " + " ".join(sys.argv[1:]))
    with _comparison_run(client, args.experiment) as run_id:
        client.log_artifact(run_id, str(markdown))
        for figure in figures:
            client.log_artifact(run_id, str(figure))
    print(table)


class _comparison_run:
    """A `role=comparison` MLflow run holding the table and plots (context manager)."""

    def __init__(self, client: mlflow.MlflowClient, experiment: str):
        self.client, self.experiment = client, experiment

    def __enter__(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(experiment_id, run_name="glue-comparison",
                                             tags={"role": "comparison"}).info.run_id
        return self.run_id

    def __exit__(self, error_type, *_):
        self.client.set_terminated(self.run_id, status="FAILED" if error_type else "FINISHED")


if __name__ == "__main__":
    main()
