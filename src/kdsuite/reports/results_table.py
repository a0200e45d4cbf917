"""Tables built from finished MLflow runs: the multi-seed GLUE comparison (`build_table`) and
the student recipe check (dev score per epoch and learning rate, `recipe_table`).

Rows: the teacher (one fine-tuned run per task), then per (student, loss) the mean +- sd over
seeds of each task's main metric, the average over tasks, and a paired test against `kd`.

The paired test: for every (task, seed) present for both the loss and kd, the difference of the
main metric; a paired t-test (scipy.stats.ttest_rel) over those pairs, two-sided. Pairing across
tasks and seeds gives the test its power (3 seeds alone cannot reach p < 0.25 with Wilcoxon);
the per-task differences are in the table for anyone who wants them task by task.

The CSV record (`update_record`, committed beside each table) holds one row per grid point
(dataset, student, loss label, seed) with the run's main metric, its teacher's and what it
computed on (versions, device: a point run again elsewhere may differ in the last bits). An MLflow
store does not outlive the machine it is on, the record does: tables are built from it, and a
grid started on a new store trains only the points it lacks (`missing_points`). A later run of a
point already recorded is not added; it is handed back beside the recorded row, a reproduction
to compare.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

from kdsuite import tracking_names as names
from kdsuite.reports.markdown import loss_rank, markdown_table
from kdsuite.tracks import get_task


@dataclass(frozen=True)
class RunResult:
    dataset: str
    student: str
    loss: str  # the loss family, or the run's `variant` tag when it has one (ablations)
    seed: int
    value: float  # the task's main dev metric (final_metric), as a fraction
    run_id: str = ""
    teacher: float | None = None  # the run's teacher on the same metric (None: not recorded)
    environment: str = ""  # versions and device the run computed on (its `environment` tag)

    @property
    def point(self) -> tuple[str, str, str, int]:
        return self.dataset, self.student, self.loss, self.seed


def finished_runs(client, experiment: str, filter_string: str | None = None) -> list:
    """The FINISHED student runs (`role=student`) of an MLflow experiment by name, narrowed by an
    MLflow search `filter_string` when given; [] when the experiment does not exist yet. `client`
    is an `mlflow.MlflowClient`."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.{names.ROLE} = '{names.STUDENT}' and attributes.status = 'FINISHED'"
    if filter_string:
        query += f" and {filter_string}"
    return client.search_runs([found.experiment_id], filter_string=query, max_results=50000)


def run_results(runs, label_by: str = "variant") -> list[RunResult]:
    """Finished student runs (MLflow `Run` objects) -> RunResult; runs without a final metric are skipped.

    `label_by="variant"`: a run tagged `variant` (e.g. `fdd_traj`: fdd with beta_delta=0) is
    labelled by that tag, others by their loss, so an ablation's variants and the loss families
    share one grid, one table builder and one CSV. `label_by="loss"`: every run by its loss family.
    The teacher's score is the run's `teacher/<main metric>` (the `main_metric` tag names it;
    runs without the tag, the task's own main metric)."""
    if label_by not in ("variant", "loss"):
        raise ValueError(f"label_by={label_by!r}: runs are labelled by 'loss' or 'variant'")
    results = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get(names.ROLE) != names.STUDENT or names.FINAL_METRIC not in metrics:
            continue
        label = tags[names.LOSS] if label_by == "loss" else tags.get(names.VARIANT) or tags[names.LOSS]
        main_metric = tags.get(names.MAIN_METRIC) or get_task(tags[names.DATASET]).main_metric
        teacher = metrics.get(names.teacher_metric(main_metric))
        results.append(RunResult(tags[names.DATASET], tags[names.STUDENT_NAME], label, int(tags[names.SEED]),
                                 metrics[names.FINAL_METRIC], run.info.run_id, teacher,
                                 tags.get(names.ENVIRONMENT, "")))
    return results


def pending(grid: list[tuple[str, str, str, int]], done: list[RunResult]) -> list[tuple[str, str, str, int]]:
    """The (dataset, student, loss, seed) grid points without a finished run: what to resume."""
    have = {r.point for r in done}
    return [point for point in grid if point not in have]


def teacher_scores(results: list[RunResult]) -> dict[str, float]:
    """Each task's teacher score as its runs recorded it. Every run of a task distils the same
    cached teacher, so one task with two different scores means runs of different teachers were
    pooled (a teacher recipe changed between sessions): refused, naming the task and the scores."""
    scores: dict[str, set[float]] = {}
    for r in results:
        if r.teacher is not None:
            scores.setdefault(r.dataset, set()).add(r.teacher)
    mixed = {task: sorted(values) for task, values in scores.items() if len(values) > 1}
    if mixed:
        raise ValueError(f"runs of one task distilled different teachers: {mixed}; a record holds one "
                         "recipe, so keep each teacher recipe's runs in a record of its own")
    return {task: values.pop() for task, values in scores.items()}


CSV_FIELDS = ["run_id", "dataset", "student", "loss", "seed", "value", "teacher", "environment"]


def read_record(path: Path) -> list[RunResult]:
    """The CSV record's rows ([] when there is none); rows written before the record kept the
    teacher's score and the environment have none."""
    if not path.exists():
        return []
    with open(path) as handle:
        return [RunResult(row["dataset"], row["student"], row["loss"], int(row["seed"]), float(row["value"]),
                          row["run_id"], float(row["teacher"]) if row.get("teacher") else None,
                          row.get("environment") or "")
                for row in csv.DictReader(handle)]


@dataclass(frozen=True)
class RecordUpdate:
    added: list[RunResult]  # points the record did not hold
    repeats: list[tuple[RunResult, RunResult]]  # (recorded row, a later run of the same point)


def update_record(path: Path, results: list[RunResult]) -> RecordUpdate:
    """Add the results of points the record does not hold yet (one row per point, in run order
    of arrival); a run of a recorded point comes back in `repeats` instead, unless it is the
    recorded run itself. The file is rewritten whole, so an older header gains new columns."""
    rows = read_record(path)
    by_point = {r.point: r for r in rows}
    added, repeats = [], []
    for result in results:
        recorded = by_point.get(result.point)
        if recorded is None:
            by_point[result.point] = result
            added.append(result)
        elif recorded.run_id != result.run_id:
            repeats.append((recorded, result))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows + added:
            writer.writerow({**{field: getattr(r, field) for field in CSV_FIELDS},
                             "teacher": "" if r.teacher is None else r.teacher})
    return RecordUpdate(added, repeats)


def cell_stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_test(results: list[RunResult], student: str, loss: str, reference: str = "kd"):
    """(mean difference, p-value, number of pairs) of `loss` minus `reference` over (task, seed)."""
    by_key = {(r.dataset, r.seed, r.loss): r.value for r in results if r.student == student}
    pairs = [
        (by_key[task, seed, loss], by_key[task, seed, reference])
        for (task, seed, name) in by_key
        if name == loss and (task, seed, reference) in by_key
    ]
    if len(pairs) < 2:
        return None, None, len(pairs)
    ours, theirs = zip(*pairs)
    difference = statistics.fmean(a - b for a, b in pairs)
    if all(a == b for a, b in pairs):
        return 0.0, 1.0, len(pairs)
    # imported here: scipy.stats takes about 4 s to import on this CPU, and every grid's
    # `python -m kdsuite.reports.grid_points` reads the record through this module with no test
    from scipy.stats import ttest_rel

    return difference, float(ttest_rel(ours, theirs).pvalue), len(pairs)


def build_table(
    results: list[RunResult], teacher: dict[str, float], tasks: list[str], losses: list[str],
    metric_names: dict[str, str], reference: str = "kd",
) -> str:
    """Markdown: teacher row, then one row per (student, loss) with mean +- sd per task (x100),
    the average over tasks of the per-task means, and the paired test against `reference`."""
    header = ["model", *[f"{task} ({metric_names[task]})" for task in tasks], "avg",
              f"vs {reference}: diff, p (pairs)"]
    teacher_cells = [f"{teacher[task] * 100:.2f}" if task in teacher else "-" for task in tasks]
    teacher_avg = [teacher[task] for task in tasks if task in teacher]
    teacher_mean = f"{statistics.fmean(teacher_avg) * 100:.2f}" if len(teacher_avg) == len(tasks) else "-"
    rows = [["teacher", *teacher_cells, teacher_mean, ""]]
    for student in sorted({r.student for r in results}):
        for loss in losses:
            cells, means = [], []
            for task in tasks:
                values = [r.value for r in results if (r.student, r.loss, r.dataset) == (student, loss, task)]
                if not values:
                    cells.append("-")
                    continue
                mean, sd = cell_stats(values)
                means.append(mean)
                cells.append(f"{mean * 100:.2f} +- {sd * 100:.2f} (n={len(values)})")
            if not means:
                continue
            average = f"{statistics.fmean(means) * 100:.2f}" if len(means) == len(tasks) else "-"
            difference, p_value, n_pairs = paired_test(results, student, loss, reference)
            versus = "reference" if loss == reference else (
                f"{difference * 100:+.2f}, p={p_value:.3g} ({n_pairs})" if p_value is not None else f"- ({n_pairs})"
            )
            rows.append([f"{student} {loss}", *cells, average, versus])
    return markdown_table(header, rows)


def recipe_point(run) -> tuple[str, str, str, float, int, int]:
    """A student run's (dataset, student, loss, learning rate, epochs, seed): its recipe-check point."""
    tags, params = run.data.tags, run.data.params
    return (tags["dataset"], tags["student"], tags["loss"], float(params["trainer.learning_rate"]),
            int(float(params["trainer.num_train_epochs"])), int(tags["seed"]))


def per_epoch(client, run, metric: str) -> list[float]:
    """The run's dev `metric` after each epoch, in order (its `eval/` history); `client` is an
    `mlflow.MlflowClient`."""
    history = sorted(client.get_metric_history(run.info.run_id, f"eval/{metric}"), key=lambda m: m.step)
    return [m.value for m in history]


def recipe_table(client, runs, tasks: list[str], students: list[str], epochs: int) -> str:
    """The student recipe check (experiments/reports/student_recipe.py): dev main metric after each epoch,
    mean +- sd over seeds (x100).

    One row per (task, student, lr, loss) with a finished `epochs`-epoch run among `runs`, whatever
    the command line asked for, so partial calls still write the whole table."""
    by_point: dict[tuple, list] = {}
    for run in runs:
        task, student, loss, lr, run_epochs, _ = recipe_point(run)
        if task in tasks and student in students and run_epochs == epochs:
            by_point.setdefault((task, student, loss, lr), []).append(run)
    header = ["task", "student", "loss", "lr", "seeds", *[f"after epoch {e}" for e in range(1, epochs + 1)]]
    rows = []
    in_order = sorted(by_point, key=lambda p: (tasks.index(p[0]), students.index(p[1]), p[3], loss_rank(p[2])))
    for task, student, loss, lr in in_order:
        metric = get_task(task).main_metric
        curves = [per_epoch(client, run, metric) for run in by_point[task, student, loss, lr]]
        cells = []
        for epoch in range(epochs):
            values = [curve[epoch] for curve in curves if len(curve) > epoch]
            if not values:
                cells.append("-")
                continue
            mean, sd = cell_stats(values)
            cells.append(f"{mean * 100:.2f} +- {sd * 100:.2f}" if len(values) > 1 else f"{mean * 100:.2f}")
        rows.append([f"{task} ({metric})", student, loss, f"{lr:g}", str(len(curves)), *cells])
    return markdown_table(header, rows)


@dataclass(frozen=True)
class LabelSummary:
    """One row of a (dataset, student) comparison: a loss (or variant) over its seeds, and its
    paired test against the reference over the seeds both have."""

    dataset: str
    student: str
    label: str
    n: int
    mean: float
    sd: float  # sample sd; 0 for a single run
    reference: str
    difference: float | None  # mean of (label - reference) over shared seeds; None below 2 pairs
    p_value: float | None  # two-sided paired t-test (scipy.stats.ttest_rel); None below 2 pairs
    pairs: int  # seeds both have


def duplicate_points(results: list[RunResult]) -> dict[tuple[str, str, str, int], list[RunResult]]:
    """Points (dataset, student, label, seed) with more than one run: a table would count them as
    seeds, and the paired test would keep one of them at random, so a report refuses them."""
    by_point: dict[tuple[str, str, str, int], list[RunResult]] = {}
    for r in results:
        by_point.setdefault(r.point, []).append(r)
    return {point: runs for point, runs in by_point.items() if len(runs) > 1}


def summarise(results: list[RunResult], reference: str = "kd") -> list[LabelSummary]:
    """Per (dataset, student, label): runs, mean and sd of the main metric, and `paired_test`
    against `reference` over the seeds both have (on that dataset and student only); sorted by
    dataset, student, then the loss-family order."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        groups.setdefault((r.dataset, r.student, r.loss), []).append(r.value)
    rows = []
    for dataset, student, label in sorted(groups, key=lambda key: (key[0], key[1], loss_rank(key[2]))):
        values = groups[dataset, student, label]
        mean, sd = cell_stats(values)
        own = [r for r in results if r.dataset == dataset]
        difference, p_value, pairs = (None, None, 0) if label == reference else paired_test(
            own, student, label, reference)
        rows.append(LabelSummary(dataset, student, label, len(values), mean, sd, reference, difference, p_value,
                                 pairs))
    return rows


def summary_tables(rows: list[LabelSummary], metric_names: dict[str, str], teacher: dict[str, float]) -> str:
    """Markdown: one table per (dataset, student) under a `### dataset, student` heading, the
    teacher's score first when it is known, then one row per label (x100): runs, mean +- sd, and
    the difference from the reference with its p-value and number of pairs."""
    sections = []
    for dataset, student in dict.fromkeys((row.dataset, row.student) for row in rows):
        own = [row for row in rows if (row.dataset, row.student) == (dataset, student)]
        reference = own[0].reference
        metric = metric_names.get(dataset, "main metric")
        header = ["loss", "runs", f"{metric} (x100), mean +- sd", f"vs {reference}: diff, p (pairs)"]
        lines = [["teacher", "", f"{teacher[dataset] * 100:.2f}", ""]] if dataset in teacher else []
        has_reference = any(row.label == reference for row in own)
        for row in own:
            if row.label == reference:
                versus = "reference"
            elif not has_reference:
                versus = f"- (no {reference} runs)"
            elif row.p_value is None:
                versus = f"- ({row.pairs})"
            else:
                versus = f"{row.difference * 100:+.2f}, p={row.p_value:.3g} ({row.pairs})"
            lines.append([row.label, str(row.n), f"{row.mean * 100:.2f} +- {row.sd * 100:.2f}", versus])
        sections.append(f"### {dataset}, {student}\n\n" + markdown_table(header, lines))
    return "\n".join(sections)


SUMMARY_CSV_FIELDS = ["dataset", "student", "metric", "label", "n", "mean", "sd", "reference", "difference",
                      "p_value", "pairs"]


def write_summary_csv(path: Path, rows: list[LabelSummary], metric_names: dict[str, str]) -> None:
    """The summary rows as CSV, unrounded (fractions, as MLflow holds them); empty cells where a
    test has fewer than two pairs."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({
                "dataset": row.dataset, "student": row.student, "metric": metric_names.get(row.dataset, ""),
                "label": row.label, "n": row.n, "mean": repr(row.mean), "sd": repr(row.sd),
                "reference": row.reference,
                "difference": "" if row.difference is None else repr(row.difference),
                "p_value": "" if row.p_value is None else repr(row.p_value), "pairs": row.pairs,
            })


def describe_update(update: RecordUpdate, record: Path) -> list[str]:
    """What one call of `update_record` added, and how each re-run of a recorded point compares."""
    lines = [f"{record.name}: {len(update.added)} new point(s)"]
    for recorded, again in update.repeats:
        dataset, student, loss, seed = recorded.point
        verdict = "equal" if again.value == recorded.value else f"differs by {again.value - recorded.value:+.3g}"
        lines.append(f"re-run of {dataset} {student} {loss} seed {seed}: recorded {recorded.value:.10g} "
                     f"(run {recorded.run_id}), now {again.value:.10g} (run {again.run_id}): {verdict}")
    return lines
