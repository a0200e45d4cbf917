"""Sweep throughput: trials per hour of `run.py -m sweep=kd_weights` at several `n_jobs` on this
machine, written into experiments/results/sweeps.md (between its throughput markers).

    GLUE_DIR=../shared/data/glue python experiments/bench/sweep_throughput.py --n-jobs 1 2 --trials 6
    GLUE_DIR=... python experiments/bench/sweep_throughput.py --n-jobs 1 4 8 --trials 16   # on a GPU

Each setting is one fresh sweep (own Optuna and MLflow SQLite stores) of `--trials` trials with
`hydra/launcher=processes` (the presets' launcher: n_jobs=1 runs trials in the sweep's process,
n_jobs>1 in as many worker processes, the CPU threads split between them). The teacher is
fine-tuned once beforehand into a shared cache, so no sweep pays for it. Two rates are reported:
over the trial phase (first trial start to last trial end, from the MLflow child runs) and end to
end (the whole `run.py -m` process, with its start-up and the report at the end). The trial is a
MiniLM teacher -> bert2l student (2 of MiniLM's layers) KD run on 128 RTE examples, 16 steps of
batch 8 at length 64, scored on 64 dev examples.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "results" / "sweeps.md"
START, END = "<!-- throughput -->", "<!-- /throughput -->"
TRIAL = [
    "dataset=rte", "teacher=minilm", "student=bert2l", "dataset.max_train_samples=128",
    "dataset.max_eval_samples=64", "dataset.max_seq_length=64", "trainer.max_steps=16",
    "trainer.per_device_train_batch_size=8", "trainer.eval_strategy=no", "trainer.logging_steps=8",
    "teacher.finetune.max_steps=8", "teacher.finetune.per_device_train_batch_size=8",
    "teacher.finetune.eval_strategy=no",
]


def run(command: list[str], folder: Path) -> float:
    """Run `python run.py ...` in `folder`; returns its wall-clock seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "run.py"), *command], cwd=folder, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def trial_phase_seconds(folder: Path) -> tuple[float, int]:
    """(first child start to last child end, number of finished children) from the MLflow store."""
    import mlflow

    from kdsuite import tracking_names as names

    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdsuite")
    children = [run for run in client.search_runs([experiment.experiment_id])
                if run.data.tags.get(names.ROLE) == names.STUDENT and run.info.status == "FINISHED"]
    start = min(run.info.start_time for run in children)
    end = max(run.info.end_time for run in children)
    return (end - start) / 1000, len(children)


def measure(n_jobs: int, trials: int, cache: Path, data_dir: str) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"kdsuite-throughput-{n_jobs}-"))
    try:
        load_before = os.getloadavg()[0]
        wall = run(["-m", "sweep=kd_weights", *TRIAL, f"dataset.data_dir={data_dir}", f"cache_dir={cache}",
                    f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.n_jobs={n_jobs}",
                    f"hydra.sweep.dir={folder / 'multirun'}"], folder)
        phase, finished = trial_phase_seconds(folder)
        return {"n_jobs": n_jobs, "trials": finished, "wall_s": wall, "phase_s": phase,
                "per_hour_phase": 3600 * finished / phase, "per_hour_wall": 3600 * finished / wall,
                "load": (load_before, os.getloadavg()[0])}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def markdown(rows: list[dict], command: str) -> str:
    cores = len(os.sched_getaffinity(0))
    lines = [
        START,
        "## Throughput: trials per hour by `n_jobs`",
        "",
        f"Produced by `{command}` on {platform.machine()} with {cores} CPU cores and no GPU (none was lent",
        "to this measurement), with `hydra/launcher=processes`; the trial is described in the script's",
        "docstring (MiniLM -> bert2l KD, 16 steps of batch 8). The machine was shared with other jobs while it ran:",
        "the 1-minute load average before and after each sweep is shown, and the rates are only as good",
        "as that load was steady.",
        "",
        "| n_jobs | trials | trial phase (s) | trials/hour (trial phase) | whole sweep (s) | trials/hour (end to end) "
        "| load before -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['n_jobs']} | {row['trials']} | {row['phase_s']:.0f} | {row['per_hour_phase']:.0f} | "
            f"{row['wall_s']:.0f} | {row['per_hour_wall']:.0f} | {row['load'][0]:.1f} -> {row['load'][1]:.1f} |"
        )
    base = rows[0]
    for row in rows[1:]:
        lines.append("")
        lines.append(f"n_jobs={row['n_jobs']} vs n_jobs={base['n_jobs']}: "
                     f"{row['per_hour_phase'] / base['per_hour_phase']:.2f}x over the trial phase, "
                     f"{row['per_hour_wall'] / base['per_hour_wall']:.2f}x end to end.")
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(section: str) -> None:
    """Replace the throughput section of sweeps.md, or put it just above its `<!-- table -->`
    marker (summarize_runs.py regenerates everything below that)."""
    text = RESULTS.read_text()
    if START in text:
        before, rest = text.split(START, 1)
        text = before + section.rstrip("\n") + rest.split(END, 1)[1]
    elif "<!-- table -->" in text:
        before, after = text.split("<!-- table -->", 1)
        text = before + section + "\n<!-- table -->" + after
    else:
        text = text + "\n" + section
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave sweeps.md alone")
    args = parser.parse_args()
    if any(n < 1 for n in args.n_jobs) or args.trials < 1:
        parser.error(f"--n-jobs {args.n_jobs} and --trials {args.trials} must be >= 1")
    data_dir = os.environ.get("GLUE_DIR")
    if not data_dir or not (Path(data_dir) / "RTE" / "train.tsv").is_file():
        parser.error(f"GLUE_DIR={data_dir!r} must hold RTE/train.tsv (e.g. ../shared/data/glue)")

    cache = Path(tempfile.mkdtemp(prefix="kdsuite-throughput-cache-"))
    try:
        warm = Path(tempfile.mkdtemp(prefix="kdsuite-throughput-warm-"))
        print("fine-tuning the teacher into the cache ...", flush=True)
        run([*TRIAL, "loss=kd", f"dataset.data_dir={data_dir}", f"cache_dir={cache}", f"output_dir={warm / 'out'}"],
            warm)
        shutil.rmtree(warm, ignore_errors=True)
        rows = []
        for n_jobs in args.n_jobs:
            rows.append(measure(n_jobs, args.trials, cache, data_dir))
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    command = "python experiments/bench/sweep_throughput.py " + " ".join(sys.argv[1:])
    section = markdown(rows, command.strip())
    print(section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
