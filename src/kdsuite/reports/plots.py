"""Bar charts of a comparison: per task, one bar per loss (or variant) at the mean of the main
metric over seeds (x100), with the sample sd as its error bar. Matplotlib's Agg backend, so
it draws without a display."""

from __future__ import annotations

import statistics
from pathlib import Path

from kdsuite.reports.results_table import RunResult


def draw_bars(axes, results: list[RunResult], tasks: list[str], labels: list[str], title: str) -> None:
    """One group of bars per task on `axes`; a label without runs on a task has no bar there."""
    width = 0.8 / max(len(labels), 1)
    for offset, label in enumerate(labels):
        positions, means, sds = [], [], []
        for index, task in enumerate(tasks):
            values = [r.value * 100 for r in results if (r.loss, r.dataset) == (label, task)]
            if values:
                positions.append(index + offset * width)
                means.append(statistics.fmean(values))
                sds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        axes.bar(positions, means, width, yerr=sds, capsize=3, label=label)
    axes.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(tasks))], tasks)
    axes.set_ylabel("dev main metric (x100), mean +- sd over seeds")
    axes.set_title(title)
    # below the panel, so that it never hides a bar (with nine rows on one task it did)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(labels), 3), fontsize="small",
                frameon=False)


def save_bar_charts(results: list[RunResult], students: list[str], labels: list[str], path: Path,
                    title: str = "{student}", task_order: list[str] | None = None) -> None:
    """One chart per student, side by side, over the tasks that student was run on (in
    `task_order`, else by name), saved as a PNG at `path`; `title` is formatted with the
    student's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = {task: index for index, task in enumerate(task_order or [])}
    task_lists = [sorted({r.dataset for r in results if r.student == student},
                         key=lambda task: (order.get(task, len(order)), task)) for student in students]
    widths = [1.8 * len(tasks) + 2 for tasks in task_lists]
    figure, axes = plt.subplots(1, len(students), figsize=(sum(widths), 4), squeeze=False,
                                gridspec_kw={"width_ratios": widths})
    for panel, student, tasks in zip(axes[0], students, task_lists):
        own = [r for r in results if r.student == student]
        draw_bars(panel, own, tasks, [label for label in labels if any(r.loss == label for r in own)],
                  title.format(student=student))
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
