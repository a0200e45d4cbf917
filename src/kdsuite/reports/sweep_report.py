"""What a finished Optuna study is summarised into: a per-trial table (CSV and Markdown) and
Optuna's plots (optimisation history, parameter importances) as PNG files."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import optuna

from kdsuite.reports.markdown import markdown_table

log = logging.getLogger(__name__)


def trial_rows(study: optuna.Study, run_ids: dict[int, str] | None = None) -> list[dict[str, object]]:
    """One row per trial: number, state, value, each searched parameter, its MLflow run, and why
    it failed (the trial's `error` user attribute, set by the sweeper)."""
    names = sorted({name for trial in study.trials for name in trial.params})
    rows = []
    for trial in study.trials:
        row: dict[str, object] = {"trial": trial.number, "state": trial.state.name, "value": trial.value}
        row.update({name: trial.params.get(name) for name in names})
        row["mlflow_run_id"] = (run_ids or {}).get(trial.number, "")
        row["error"] = trial.user_attrs.get("error", "")
        rows.append(row)
    return rows


def trials_markdown(rows: list[dict[str, object]]) -> str:
    """The trial rows as a Markdown table: floats to 4 significant digits, None as an empty cell."""
    if not rows:
        return "(no trials)\n"
    header = list(rows[0])

    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    return markdown_table(header, [[cell(row[key]) for key in header] for row in rows])


def write_table(rows: list[dict[str, object]], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / "trials.csv", folder / "trials.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(trials_markdown(rows))
    return [csv_path, md_path]


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimisation history always; parameter importances when there are >= 2 finished trials
    and a searched parameter (Optuna cannot rank otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as optuna_plots

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plots = {"optimization_history.png": optuna_plots.plot_optimization_history}
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(finished) >= 2 and any(t.params for t in finished):
        plots["param_importances.png"] = optuna_plots.plot_param_importances
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
            figure.savefig(folder / name, dpi=120, bbox_inches="tight")
            matplotlib.pyplot.close(figure)
            written.append(folder / name)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:  # e.g. constant objective
            log.warning("could not draw %s: %s", name, error)
    return written
