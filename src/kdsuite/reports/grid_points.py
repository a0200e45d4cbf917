"""The points of a GLUE grid that its CSV record lacks, as the Hydra multiruns that train them.

    python -m kdsuite.reports.grid_points --record experiments/results/glue_runs.csv \
        --datasets rte,mrpc,sst2_8k --losses ce,kd --seed 4 --student bert2l [--variant fdd_traj]

prints one line of overrides per multirun, e.g. `dataset=rte,mrpc loss=ce,kd`, and nothing when
the record holds every point. `experiments/grids/glue_grid.sh` runs each line. A multirun is a cartesian
grid, so the missing (dataset, loss) points of a seed are grouped by dataset, and datasets missing
the same losses share one multirun: a seed that is wholly missing is the one multirun it always
was, with all its points spread over the launcher's processes.

Within one MLflow store `resume=true` already skips finished runs; the record is what outlives
the store (README, Results), so a grid started again on a new machine trains only what no
session recorded. Dataset options are mapped to their task names the way run.py composes them
(`sst2_8k` is task `sst2`); a variant (`--variant`) is recorded under its own label.

A module of the package (run with `python -m`), not a script beside the grids, so that its test
imports it as it imports the record code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir

from kdsuite.reports.results_table import pending, read_record

CONF = Path(__file__).resolve().parents[1] / "conf"  # the package's conf (the repository's conf/)


def task_names(datasets: list[str]) -> dict[str, str]:
    """dataset config option -> the task name its runs are recorded under."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return {option: compose("config", overrides=[f"dataset={option}"]).dataset.name for option in datasets}


def missing_multiruns(record: list, datasets: list[str], losses: list[str], seed: int, student: str,
                      variant: str | None, names: dict[str, str]) -> list[str]:
    """Override lines, one multirun each, covering exactly the grid points missing from `record`."""
    label = {loss: variant or loss for loss in losses}
    todo = set(pending([(names[d], student, label[loss], seed) for d in datasets for loss in losses], record))
    groups: dict[tuple[str, ...], list[str]] = {}
    for dataset in datasets:
        missing = tuple(loss for loss in losses if (names[dataset], student, label[loss], seed) in todo)
        if missing:
            groups.setdefault(missing, []).append(dataset)
    return [f"dataset={','.join(group)} loss={','.join(missing)}" for missing, group in groups.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path,
                        help="the CSV record (it may not exist yet; none: every point is missing)")
    parser.add_argument("--datasets", required=True, help="comma-separated dataset options")
    parser.add_argument("--losses", required=True, help="comma-separated loss options")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--variant", help="the runs' variant tag (ablations), their label in the record")
    args = parser.parse_args()
    datasets, losses = args.datasets.split(","), args.losses.split(",")
    record = read_record(args.record) if args.record else []
    for line in missing_multiruns(record, datasets, losses, args.seed, args.student,
                                  args.variant, task_names(datasets)):
        print(line)


if __name__ == "__main__":
    main()
